%% Logging and tracing of Python code (PROTOCOL.md §3.14): the py:configure_logging/0,1,
%% py:enable_tracing/0, disable_tracing/0, get_traces/0, clear_traces/0 API.
%%
%% The configuration (#{log_level, log_format, tracing}) is kept in persistent_term and sent to every
%% port as an ops_config frame: by these functions to the ports that are up (each answers once it has
%% applied it, so when they return ok the next request anywhere sees it), and by py_port to every new OS
%% process before it serves (config_frame/2). Python's log records and finished spans come back as
%% log/span frames, which the owner hands to py_ops_sink without decoding them; the sink logs the
%% records and keeps the spans in the py_traces table, at most max_traces of them (the oldest go).
-module(py_ops).

%% API.
-export([init/0]).
-export([configure_logging/0]).
-export([configure_logging/1]).
-export([enable_tracing/0]).
-export([disable_tracing/0]).
-export([get_traces/0]).
-export([clear_traces/0]).
-export([config_frame/2]).
-export([max_traces/0]).
-export([counters/0]).
-export([count/2]).
-export([slots/0]).

-export_type([span/0]).

-type span() :: #{name := binary(), span_id := pos_integer(), parent_id := pos_integer() | undefined,
	start_time := integer(), end_time := integer(), duration_us := non_neg_integer(),
	status := ok | error, attributes := map(), end_attrs := map(),
	events := [#{name := binary(), attrs := map(), time := integer()}]}.

-define(CONFIG, {?MODULE, config}).
-define(COUNTERS, {?MODULE, counters}).
-define(DEFAULT_CONFIG, #{log_level => none, log_format => none, tracing => false}).
%% Ids of our ops_config requests: the context machinery's range (py_request ?CTRL_BASE), whose late
%% answers py_port drops with a log line and nothing kept.
-define(CTRL_BASE, (1 bsl 44)).
-define(APPLY_TIMEOUT, 5000).
-define(OPS_CONFIG, 28).
%% counters: log records logged, log records the ports dropped, spans stored, spans the ports dropped,
%% spans evicted from the store (max_traces).
-define(COUNTER_NAMES, [log_records, log_dropped, spans, spans_dropped, spans_evicted]).

%% Python levelno of each Erlang level (the reference docs' mapping).
-define(LEVELS, #{debug => 10, info => 20, warning => 30, error => 40, critical => 50}).

%% API.

%% The application starts with logging unconfigured and tracing off (the docs' default); called by
%% erlang_python_sup before the ports start. Creates the span table (owned by the supervisor).
-spec init() -> ok.
init() ->
	ok = persistent_term:put(?CONFIG, ?DEFAULT_CONFIG),
	case persistent_term:get(?COUNTERS, undefined) of
		undefined -> ok = persistent_term:put(?COUNTERS, counters:new(length(?COUNTER_NAMES), [write_concurrency]));
		_ -> ok
	end,
	py_traces = ets:new(py_traces, [ordered_set, public, named_table, {write_concurrency, true}]),
	ok.

%% Python logging to the Erlang logger at level debug, format "%(message)s".
-spec configure_logging() -> ok | {error, term()}.
configure_logging() ->
	configure_logging(#{}).

%% Opts: level => debug | info | warning | error | critical (default debug), format => the Python
%% format string of the message (binary or string, default <<"%(message)s">>). A record below the
%% level is never made in Python. {error, {invalid_option, Key, Value}} for a bad value,
%% {error, {unknown_option, Key}}, or the Python error of a format logging refuses.
-spec configure_logging(map()) -> ok | {error, term()}.
configure_logging(Opts) when is_map(Opts) ->
	case logging_config(maps:to_list(Opts), #{log_level => 10, log_format => <<"%(message)s">>}) of
		{ok, Logging} -> reconfigure(Logging, revert);
		{error, _} = Error -> Error
	end;
configure_logging(Opts) ->
	{error, {invalid_option, options, Opts}}.

%% From now on erlang.Span and @erlang.trace in every port record spans. A port that does not answer
%% in time (its control thread waits for the GIL) is logged and gets the setting when it can.
-spec enable_tracing() -> ok.
enable_tracing() ->
	ok_anyway(reconfigure(#{tracing => true}, keep)).

%% Spans are no longer recorded (a Span then costs one flag check); those collected stay.
-spec disable_tracing() -> ok.
disable_tracing() ->
	ok_anyway(reconfigure(#{tracing => false}, keep)).

%% The spans collected so far, oldest (first finished) first; at most max_traces.
-spec get_traces() -> {ok, [span()]}.
get_traces() ->
	ok = py_ops_sink:sync(),
	{ok, [Span || {_, Span} <- ets:tab2list(py_traces)]}.

-spec clear_traces() -> ok.
clear_traces() ->
	ok = py_ops_sink:sync(),
	true = ets:delete_all_objects(py_traces),
	ok.

%% The ops_config frame a new OS process of the slot gets before it serves (py_port), or none when the
%% configuration is the default one (nothing to do).
-spec config_frame(py_codec:codec(), non_neg_integer()) -> iodata() | none.
config_frame(Codec, Id) ->
	case config() of
		Config when Config =:= ?DEFAULT_CONFIG -> none;
		Config -> frame(Codec, Id, Config)
	end.

%% The most spans kept (application env max_traces, default 10000).
-spec max_traces() -> pos_integer().
max_traces() ->
	case application:get_env(erlang_python, max_traces, 10000) of
		N when is_integer(N), N > 0 -> N;
		_ -> 10000
	end.

%% Totals since the node started: log_records, log_dropped, spans, spans_dropped, spans_evicted.
-spec counters() -> #{atom() => non_neg_integer()}.
counters() ->
	Ref = persistent_term:get(?COUNTERS),
	maps:from_list([{Name, counters:get(Ref, I)} || {I, Name} <- lists:enumerate(?COUNTER_NAMES)]).

-spec count(atom(), non_neg_integer()) -> ok.
count(_, 0) ->
	ok;
count(Name, N) ->
	case persistent_term:get(?COUNTERS, undefined) of
		undefined -> ok;
		Ref -> counters:add(Ref, index(Name, ?COUNTER_NAMES, 1), N)
	end.

%% Every port slot: the default pool's, and those of named pools that run ports of their own.
-spec slots() -> [pos_integer()].
slots() ->
	py_pool_ports:all_slots().

%% Internal.

logging_config([], Acc) ->
	{ok, Acc};
logging_config([{level, Level} | Rest], Acc) ->
	case maps:find(Level, ?LEVELS) of
		{ok, No} -> logging_config(Rest, Acc#{log_level => No});
		error -> {error, {invalid_option, level, Level}}
	end;
logging_config([{format, Format} | Rest], Acc) when is_binary(Format); is_list(Format) ->
	case unicode:characters_to_binary(Format) of
		Bin when is_binary(Bin) -> logging_config(Rest, Acc#{log_format => Bin});
		_ -> {error, {invalid_option, format, Format}}
	end;
logging_config([{format, Format} | _], _) ->
	{error, {invalid_option, format, Format}};
logging_config([{Key, _} | _], _) ->
	{error, {unknown_option, Key}}.

config() ->
	persistent_term:get(?CONFIG, ?DEFAULT_CONFIG).

%% Stores the new configuration (so ports that start meanwhile get it) and applies it to every port that
%% is up. On an error (Python refused a format string, or a port did not answer within 5 s), with
%% revert the previous configuration is put back everywhere; with keep it stays.
reconfigure(Change, OnError) ->
	Old = config(),
	New = maps:merge(Old, Change),
	ok = persistent_term:put(?CONFIG, New),
	case apply_everywhere(New) of
		ok ->
			ok;
		{error, _} = Error when OnError =:= keep ->
			Error;
		{error, _} = Error ->
			ok = persistent_term:put(?CONFIG, Old),
			_ = apply_everywhere(Old),
			Error
	end.

%% Sends ops_config to every port that is up, then collects the answers (each within ?APPLY_TIMEOUT).
%% A port that dies meanwhile gets the configuration when it starts again.
apply_everywhere(Config) ->
	Sent = [send_config(Info, Config) || Slot <- slots(),
		#{status := St} = Info <- [py_port:info(Slot)], St =:= up orelse St =:= condemned],
	Results = [await_config(S) || S <- Sent],
	case [E || {error, _} = E <- Results] of
		[] -> ok;
		[Error | _] -> Error
	end.

send_config(#{port := Port, codec := Codec, slot := Slot}, Config) ->
	Id = ?CTRL_BASE + erlang:unique_integer([positive]),
	true = ets:insert(py_inflight, {Id, self(), Slot}),
	try port_command(Port, frame(Codec, Id, Config)) of
		true -> {Id, Codec}
	catch error:badarg ->
		_ = ets:delete(py_inflight, Id),
		closed
	end.

await_config(closed) ->
	ok;
await_config({Id, Codec}) ->
	receive
		{py_frame, Id, 65, _, _} -> ok;
		{py_frame, Id, 66, _, Body} ->
			{Class, Message, _} = py_codec:decode(Codec, Body),
			{error, {py_errors:class(Class), unicode:characters_to_list(Message)}};
		{py_frame, Id, 70, _, Body} ->
			{Reason, Detail} = py_codec:decode(Codec, Body),
			{error, {protocol_error, Reason, Detail}};
		{py_frame, Id, port_exited, _, _} -> ok
	after ?APPLY_TIMEOUT ->
		case ets:take(py_inflight, Id) of
			[_] -> {error, timeout};
			%% The owner took it: the answer is on its way.
			[] -> await_config({Id, Codec})
		end
	end.

frame(Codec, Id, #{log_level := Level, log_format := Format, tracing := Tracing}) ->
	[<<?OPS_CONFIG, 0, 0:16, 0:32, Id:64>> |
		py_codec:encode(Codec, #{log_level => Level, log_format => Format, tracing => Tracing})].

ok_anyway(ok) ->
	ok;
ok_anyway({error, Why}) ->
	logger:warning("erlang_python: tracing could not be switched in every port: ~tp", [Why],
		#{domain => [erlang_python]}),
	ok.

index(Name, [Name | _], I) -> I;
index(Name, [_ | Rest], I) -> index(Name, Rest, I + 1).
