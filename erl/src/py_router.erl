%% Which port and which context serve a request.
%%
%% Scope: the layout (ports x contexts per port) and the pick of a slot and context index for a routing
%% key. A process always hashes to the same slot and context, so its process-bound environment (the
%% globals its py:exec calls fill) is always the one its later py:eval and py:call see.
%%
%% The layout is written once by erlang_python_sup and read from persistent_term on every request.
-module(py_router).

%% API.
-export([set_config/1]).
-export([erase_config/0]).
-export([config/0]).
-export([pick/1]).
-export([num_slots/0]).
-export([num_contexts/0]).

-export_type([config/0]).

-type config() :: #{num_ports := pos_integer(), contexts_per_port := pos_integer(),
	default_timeout := timeout(), _ => _}.

-define(KEY, {?MODULE, config}).

%% API.

-spec set_config(config()) -> ok.
set_config(Config) ->
	persistent_term:put(?KEY, Config).

-spec erase_config() -> ok.
erase_config() ->
	_ = persistent_term:erase(?KEY),
	ok.

%% The layout, or undefined when the application is not running.
-spec config() -> config() | undefined.
config() ->
	persistent_term:get(?KEY, undefined).

%% {Slot, ContextIndex}: Slot in 1..num_ports, ContextIndex in 0..contexts_per_port-1.
-spec pick(term()) -> {pos_integer(), non_neg_integer()} | {error, not_started}.
pick(Key) ->
	case persistent_term:get(?KEY, undefined) of
		#{num_ports := Ports, contexts_per_port := PerPort} ->
			N = erlang:phash2(Key, Ports * PerPort),
			{N div PerPort + 1, N rem PerPort};
		undefined ->
			{error, not_started}
	end.

-spec num_slots() -> non_neg_integer().
num_slots() ->
	case config() of
		#{num_ports := Ports} -> Ports;
		undefined -> 0
	end.

-spec num_contexts() -> non_neg_integer().
num_contexts() ->
	case config() of
		#{num_ports := Ports, contexts_per_port := PerPort} -> Ports * PerPort;
		undefined -> 0
	end.
