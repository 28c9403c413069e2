%% Memory caps (opsb). Per context: py_context:new(#{memory_limit => Bytes}) sets the limit of that
%% context's thread (the `memory_limit` frame, PROTOCOL.md §3.13); per pool: the app env
%% `memory_limit` gives every context of every port that limit (--memory-limit). A request whose
%% allocation would pass it gets {error, {memory_limit, #{limit, used, requested}}} and the port lives
%% on. What the per-thread count cannot see (memory freed by another thread, C libraries that allocate
%% with malloc directly) is bounded per port by max_rss (py_recycle: the port is recycled).
-module(py_mem_limit).

-export([apply_option/2]).
-export([set/2]).
-export([details/1]).
-export([port_args/0]).

-define(MEMORY_LIMIT, 27).

%% Starts a context with Start and sets its memory_limit if Opts has one. A bad value is refused before
%% anything starts: {error, {bad_memory_limit, Value}}.
-spec apply_option(map(), fun(() -> {ok, pid()} | {error, term()})) -> {ok, pid()} | {error, term()}.
apply_option(#{memory_limit := infinity}, Start) ->
	Start();
apply_option(#{memory_limit := Limit}, Start) when is_integer(Limit), Limit > 0 ->
	case Start() of
		{ok, Ctx} ->
			case set(Ctx, Limit) of
				ok -> {ok, Ctx};
				{error, _} = E -> _ = py_context:stop(Ctx), E
			end;
		Error ->
			Error
	end;
apply_option(#{memory_limit := Bad}, _) ->
	{error, {bad_memory_limit, Bad}};
apply_option(_, Start) ->
	Start().

%% The context's limit from now on (infinity: none). Its count starts when a limit is first set.
-spec set(pid(), pos_integer() | infinity) -> ok | {error, term()}.
set(Ctx, Limit) ->
	Bytes = case Limit of infinity -> 0; _ -> Limit end,
	case py_port_admin:context_id(Ctx) of
		{ok, Slot, CtxId} ->
			case py_port_admin:request(Slot, CtxId, ?MEMORY_LIMIT, Bytes, 30000) of
				{ok, ok} -> ok;
				{error, _} = E -> E
			end;
		{error, _} = E ->
			E
	end.

%% The numbers of the port's message "memory limit of L bytes reached (U bytes in use, R more
%% requested)".
-spec details(binary()) -> #{limit => integer(), used => integer(), requested => integer(), message := binary()}.
details(Message) ->
	case re:run(Message, <<"of (\\d+) bytes reached \\((\\d+) bytes in use, (\\d+) more">>,
			[{capture, all_but_first, binary}]) of
		{match, [L, U, R]} ->
			#{limit => binary_to_integer(L), used => binary_to_integer(U), requested => binary_to_integer(R),
			  message => Message};
		nomatch ->
			#{message => Message}
	end.

%% --memory-limit for every port of the pool, from the app env memory_limit (bytes or infinity).
-spec port_args() -> [string()].
port_args() ->
	case application:get_env(erlang_python, memory_limit, infinity) of
		N when is_integer(N), N > 0 -> ["--memory-limit", integer_to_list(N)];
		_ -> []
	end.
