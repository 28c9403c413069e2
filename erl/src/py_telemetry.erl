%% Telemetry events of erlang_python, through the `telemetry' library when it is in the node, else as
%% logger events at debug level (domain [erlang_python, telemetry]).
%%
%% Events (measurements; metadata):
%%   [erlang_python, request, start]      #{monotonic_time, system_time}; #{kind, slot}
%%   [erlang_python, request, stop]       #{duration, monotonic_time}; #{kind, slot, pool}
%%   [erlang_python, request, exception]  #{duration, monotonic_time}; #{kind, slot, pool, reason}
%%                                        (a call that returned {error, Reason}, timeouts included)
%%   [erlang_python, port, start]         #{duration (native units, spawn to ready)}; #{slot, os_pid, generation}
%%   [erlang_python, port, exit]          #{uptime_ms}; #{slot, os_pid, exit_status, signal, reason}
%%   [erlang_python, port, restart]       #{delay_ms}; #{slot}
%%   [erlang_python, queue, depth]        #{inflight, owner_queue}; #{slot}, every telemetry_interval_ms
%%
%% Whether `telemetry' is there is looked up once (code:which/1) and cached in persistent_term; the
%% application start looks again (refresh/0), so a node that loads telemetry later should call it.
-module(py_telemetry).

%% API.
-export([refresh/0]).
-export([mode/0]).
-export([execute/3]).
-export([enabled/0]).

-define(MODE, {?MODULE, mode}).

%% API.

%% Looks for the telemetry module again; returns what events go through now.
-spec refresh() -> telemetry | logger.
refresh() ->
	Mode = case code:which(telemetry) of
		non_existing -> logger;
		_ ->
			case code:ensure_loaded(telemetry) of
				{module, telemetry} ->
					case erlang:function_exported(telemetry, execute, 3) of
						true -> telemetry;
						false -> logger
					end;
				_ -> logger
			end
	end,
	ok = persistent_term:put(?MODE, Mode),
	Mode.

-spec mode() -> telemetry | logger.
mode() ->
	case persistent_term:get(?MODE, undefined) of
		undefined -> refresh();
		Mode -> Mode
	end.

%% Whether an event would go anywhere (to skip measuring what nobody receives).
-spec enabled() -> boolean().
enabled() ->
	mode() =:= telemetry orelse logger:allow(debug, ?MODULE).

%% One event. With telemetry: telemetry:execute/3 (its handlers run here, in the caller, as the library
%% does everywhere). Without: a debug logger event, built only if debug is enabled for this module.
-spec execute([atom()], map(), map()) -> ok.
execute(Event, Measurements, Meta) ->
	case mode() of
		telemetry ->
			_ = (catch telemetry:execute(Event, Measurements, Meta)),
			ok;
		logger ->
			case logger:allow(debug, ?MODULE) of
				true ->
					logger:log(debug, #{event => Event, measurements => Measurements, metadata => Meta},
						#{domain => [erlang_python, telemetry]});
				false ->
					ok
			end
	end.
