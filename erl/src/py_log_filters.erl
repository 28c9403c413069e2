%% Makes this application's log events visible in OTP's default logger handler.
%%
%% Our events carry a domain ([erlang_python | _] for our own, [python] for Python's logging records, as
%% the reference docs promise), and OTP's `default' handler stops every event whose domain is not under
%% [otp] (its filter_default is stop). Without this, a port crash report or a Python warning would be
%% dropped silently in a node with the stock logger configuration. At application start we add one
%% domain filter per domain to the `default' handler, if there is one; at stop we remove them. App env
%% `log_filters' = false leaves the handler alone (for nodes that route these domains themselves).
-module(py_log_filters).

-export([install/0]).
-export([remove/0]).

-define(FILTERS, [{erlang_python_domain, [erlang_python]}, {erlang_python_python_domain, [python]}]).

-spec install() -> ok.
install() ->
	case application:get_env(erlang_python, log_filters, true) of
		true ->
			_ = [logger:add_handler_filter(default, Id, {fun logger_filters:domain/2, {log, sub, Domain}})
				|| {Id, Domain} <- ?FILTERS],
			ok;
		_ ->
			ok
	end.

-spec remove() -> ok.
remove() ->
	_ = [logger:remove_handler_filter(default, Id) || {Id, _} <- ?FILTERS],
	ok.
