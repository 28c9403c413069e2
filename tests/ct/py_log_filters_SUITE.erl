%% py_log_filters: with the stock logger configuration, OTP's default handler stops every event whose
%% domain is not under [otp]; the application adds domain filters so that its own events and Python's
%% logging records (domain [python]) reach that handler, and removes them at stop.
-module(py_log_filters_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-export([all/0, init_per_testcase/2, end_per_testcase/2]).
-export([our_domains_pass_the_default_handler/1, removed_at_stop/1, opt_out/1]).

all() -> [our_domains_pass_the_default_handler, removed_at_stop, opt_out].

init_per_testcase(_, Config) ->
	case logger:get_handler_config(default) of
		{ok, _} -> Config;
		%% These cases are about OTP's stock `default' handler; a node started without it (-kernel
		%% logger [{handler, default, undefined}]) has nothing to test. CT's and tools/test.sh's nodes have it.
		_ -> {skip, "no default handler in this node"}
	end.

end_per_testcase(_, _Config) ->
	py_ct_helper:stop_app().

our_domains_pass_the_default_handler(_) ->
	ok = py_ct_helper:start_app([]),
	?assertEqual(log, passes(#{domain => [erlang_python]})),
	?assertEqual(log, passes(#{domain => [erlang_python, telemetry]})),
	?assertEqual(log, passes(#{domain => [python]})),
	%% Other domains are as the handler had them (stopped by OTP's own configuration).
	?assertEqual(stop, passes(#{domain => [somebody_else]})).

removed_at_stop(_) ->
	ok = py_ct_helper:start_app([]),
	ok = py_ct_helper:stop_app(),
	?assertEqual(stop, passes(#{domain => [erlang_python]})).

opt_out(_) ->
	ok = py_ct_helper:start_app([{log_filters, false}]),
	?assertEqual(stop, passes(#{domain => [erlang_python]})).

%% What the default handler's filters decide for an event with this metadata: log or stop.
passes(Meta) ->
	{ok, #{filters := Filters, filter_default := Default}} = logger:get_handler_config(default),
	Event = #{level => warning, msg => {string, "x"}, meta => Meta#{pid => self(), gl => group_leader()}},
	run(Filters, Event, Default).

run([], _, Default) -> Default;
run([{_, {F, Args}} | Rest], Event, Default) ->
	case F(Event, Args) of
		stop -> stop;
		ignore -> run(Rest, Event, Default);
		_ -> log
	end.
