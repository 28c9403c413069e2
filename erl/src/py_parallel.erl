%% py:parallel/1: a list of calls run at the same time over the contexts of the default pool.
%%
%% Scope: spreading the calls and collecting their results in order. One worker process per context
%% used, at most as many as the pool has contexts (each context runs one request at a time, so more
%% would only queue): that is the bound on how many calls run at once. Worker i is pinned to the
%% i-th context counted ports first (1/ctx0, 2/ctx0, ..., 1/ctx1, ...), so with more than one port
%% the calls run on different OS processes, truly in parallel. A worker takes the next call from a
%% shared atomic counter until none is left, so a slow call does not hold up the others' share.
%%
%% Each call holds a py_semaphore slot while it runs and has the default timeout; it runs outside
%% any process-bound environment (Env undefined), since the contexts differ from the caller's own.
-module(py_parallel).

%% API.
-export([run/2]).

%% API.

-spec run([{atom() | binary(), atom() | binary(), list()}], timeout()) -> {ok, [term()]} | {error, term()}.
run([], _Timeout) ->
	{ok, []};
run(Calls, Timeout) ->
	case py_router:config() of
		#{num_ports := Ports, contexts_per_port := PerPort} ->
			Tasks = list_to_tuple(Calls),
			Places = places(Ports, PerPort, min(tuple_size(Tasks), Ports * PerPort)),
			spread(Tasks, Places, Timeout);
		undefined ->
			{error, not_started}
	end.

%% Internal.

%% The first N contexts, ports first.
places(Ports, _PerPort, N) ->
	[{I rem Ports + 1, I div Ports} || I <- lists:seq(0, N - 1)].

spread(Tasks, Places, Timeout) ->
	Parent = self(),
	Tag = make_ref(),
	Next = atomics:new(1, []),
	%% py:parallel from inside a callback is nested in that callback's request (PROTOCOL.md §3.4): a
	%% call that lands on the waiting context must say so, or it queues behind the wait for good.
	Nested = py_request:nested_marker(),
	%% Monitored both ways, not linked: a worker killed from outside ends the wait with an error
	%% instead of killing the caller, and the workers stop taking calls once the caller is gone.
	Workers = maps:from_list([{MRef, Pid} || Place <- Places,
		{Pid, MRef} <- [spawn_monitor(fun() ->
			ok = py_request:set_nested_marker(Nested),
			PMRef = erlang:monitor(process, Parent),
			worker(Parent, PMRef, Tag, Tasks, Next, Place, Timeout)
		end)]]),
	Result = collect(Tag, Workers, tuple_size(Tasks), #{}),
	_ = [erlang:demonitor(MRef, [flush]) || MRef <- maps:keys(Workers)],
	Result.

%% Calls the tasks the counter hands out, one at a time, each result sent as soon as it is there,
%% until none is left or the caller is gone.
worker(Parent, PMRef, Tag, Tasks, Next, Place = {Slot, CtxIndex}, Timeout) ->
	I = atomics:add_get(Next, 1, 1),
	Gone = receive {'DOWN', PMRef, process, _, _} -> true after 0 -> false end,
	case I =< tuple_size(Tasks) andalso not Gone of
		true ->
			{Module, Function, Args} = element(I, Tasks),
			Result = try
				py_semaphore:run(fun() ->
					py_request:run(call, {slot, Slot, CtxIndex}, {undefined, Module, Function, Args, #{}},
						Timeout, true)
				end)
			catch Class:Reason ->
				{error, {Class, Reason}}
			end,
			Parent ! {Tag, I, Result},
			worker(Parent, PMRef, Tag, Tasks, Next, Place, Timeout);
		false ->
			ok
	end.

%% Waits for one result per task; bounded by the workers, whose calls each have their timeout.
collect(_Tag, _Workers, N, Results) when map_size(Results) =:= N ->
	{ok, [maps:get(I, Results) || I <- lists:seq(1, N)]};
collect(Tag, Workers, N, Results) ->
	receive
		{Tag, I, Result} ->
			collect(Tag, Workers, N, Results#{I => Result});
		{'DOWN', MRef, process, _, Reason} when is_map_key(MRef, Workers), Reason =/= normal ->
			_ = [exit(Pid, kill) || Pid <- maps:values(Workers)],
			{error, {parallel_worker_died, Reason}}
	end.
