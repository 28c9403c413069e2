%% py:interrupt/1 (PROTOCOL.md §3.13): stops whatever request a context is running. The port raises
%% erlang.CancelledError in the context thread (the cancel machinery: waits in erlang.call,
%% erlang.sleep and blocked output end too) and the interrupted request ends with {error, interrupted}.
-module(py_interrupt).

-export([interrupt/1]).
-export([interrupt/2]).

-define(INTERRUPT, 26).

%% ok: a request was running and is being interrupted (one that finishes first still returns its
%% result); not_running: the context was idle. A request stuck in C code that holds the GIL cannot be
%% interrupted: the answer then waits for the GIL, and interrupt/2 returns {error, timeout}.
-spec interrupt(pid()) -> ok | not_running | {error, term()}.
interrupt(Ctx) ->
	interrupt(Ctx, 5000).

-spec interrupt(pid(), timeout()) -> ok | not_running | {error, term()}.
interrupt(Ctx, Timeout) when is_pid(Ctx) ->
	case py_port_admin:context_id(Ctx) of
		{ok, Slot, CtxId} ->
			case py_port_admin:request(Slot, CtxId, ?INTERRUPT, [], Timeout) of
				{ok, ok} -> ok;
				{ok, not_running} -> not_running;
				{error, {protocol_error, unknown_context, _}} -> {error, {context_down, Ctx}};
				{error, _} = E -> E
			end;
		{error, _} = E ->
			E
	end.

