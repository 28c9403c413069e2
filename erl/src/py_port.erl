%% The owner of one erlang_python_port OS process (one slot of the pool).
%%
%% Scope: starting the port program and waiting for its hello; publishing the slot in persistent_term
%% ({py_port, Slot}) for callers; routing every frame the port writes to the process that waits for it;
%% the owner's own duties (send, callbacks from threads that serve no request, environment monitors,
%% cancel grace timers); and, when the OS process dies, failing what was in flight with the reason and
%% starting a new one.
%%
%% The owner only routes. Callers build their frames and port_command them themselves (py_request), and
%% decode the bodies of the frames routed to them. The owner reads the 16-byte header:
%%
%%   result/error/protocol_error with an id: ets:take(py_inflight, Id) and forward;
%%   callback/output with an id:            ets:lookup(py_inflight, Id) and forward (the target of a
%%                                          callback is monitored: its death cancels its requests);
%%   everything with id 0:                  handled here (the body is decoded here, it is rare).
%%
%% The forwarded message is {py_frame, Id, Kind, Ctx, Body}; after a port death each caller in flight
%% gets {py_frame, Id, port_exited, 0, Reason} instead.
%%
%% After every hello the owner sends context_init (PROTOCOL.md §3.6: paths, imports and preload from
%% py_import) to each of the port's contexts and publishes the slot up only when all have answered
%% (bounded by the start timeout). When it decides to kill the port (a cancel grace expired) it first
%% publishes the slot condemned, so callers stop sending there, and sends drain: the port hands back the
%% requests it had not started (`requeue', routed to their callers like a final frame), which they send
%% again elsewhere. When the OS process dies, the explicit contexts that lived in it are told
%% (py_context:port_exited/3).
%%
%% Ids: callers number requests from ?REQ_BASE and casts from ?CAST_BASE (py_request), so they never
%% collide with the port's own callback ids, which count from 1.
-module(py_port).
-behaviour(gen_server).

%% API.
-export([start_link/2]).
-export([child_spec/2]).
-export([info/1]).
-export([wait_ready/3]).
-export([cancel_watch/4]).
-export([sync/2]).
-export([await_cancel/4]).
-export([crash_file/1]).
-export([pending_cancels/1]).
-export([forget_caller/1]).

%% gen_server.
-export([init/1]).
-export([handle_call/3]).
-export([handle_cast/2]).
-export([handle_info/2]).
-export([terminate/2]).

-export_type([info/0]).
-export_type([exit_reason/0]).

%% Request id ranges; the same values are in py_request.
-define(REQ_BASE, (1 bsl 48)).
-define(CAST_BASE, (1 bsl 56)).
%% The owner's own context_init requests: below the callers' ids, far above the port's callback ids.
-define(INIT_BASE, (1 bsl 40)).
%% Callers' context_create/init/destroy requests (py_request): never cancelled, never watched.
-define(CTRL_BASE, (1 bsl 44)).

%% nested: the port answered context_init, so it knows PROTOCOL v2's contexts (the nested flag, drain).
-type info() :: #{owner := pid(), status := up | down | condemned, slot := pos_integer(),
	nested => boolean(), start_failure => exit_reason(),
	port => port(), codec => py_codec:codec(), contexts => tuple(), os_pid => non_neg_integer(),
	generation => non_neg_integer(), python => binary(), build => atom(), hello => map()}.
-type exit_reason() :: #{exit_status := non_neg_integer() | undefined,
	signal := atom() | {signal, pos_integer()} | undefined, traceback := binary(),
	reason := crashed | cancel_grace_expired | no_hello | shutdown | owner_down | recycled, error => term()}.
-type opts() :: #{codec := py_codec:codec(), contexts := pos_integer(), cancel_grace_ms := non_neg_integer(),
	spin_us := non_neg_integer(), max_frame => non_neg_integer(), start_timeout => timeout(),
	venv => binary() | none, sandbox => boolean(),
	port_executable => file:filename()}.

-record(state, {
	slot :: pos_integer(),
	opts :: opts(),
	exe :: file:filename(),
	args :: [string()],
	crash_file :: file:filename(),
	port = undefined :: port() | undefined,
	status = down :: starting | up | down,
	os_pid = undefined :: non_neg_integer() | undefined,
	generation = 0 :: non_neg_integer(),
	info = #{} :: map(),
	started_at = 0 :: integer(),
	backoff = 0 :: non_neg_integer(),  %% fast deaths in a row
	kill_reason = undefined :: undefined | cancel_grace_expired | no_hello | init_timeout | recycled,
	killed = false :: boolean(),  %% a kill went out to this OS process: never a second one
	os_start = undefined :: binary() | undefined,  %% its start time in /proc: the pid is still ours
	start_failure = undefined :: exit_reason() | undefined,  %% why the last start failed (published)
	waiters = [] :: [{gen_server:from(), non_neg_integer()}],
	envs = #{} :: #{pid() => reference()},
	%% Processes a callback frame was forwarded to that have no environment here (explicit-env callers,
	%% py:parallel workers, callback helpers, context processes): monitored so that a death cancels
	%% their requests (one waiting on the callback would block its context for good). Bounded by the
	%% live processes that got a callback; an entry goes with its process's DOWN.
	callees = #{} :: #{pid() => reference()},
	cancels = #{} :: #{non_neg_integer() => reference()},
	cancel_waiters = #{} :: #{non_neg_integer() => [gen_server:from()]},
	done_early = #{} :: #{non_neg_integer() => true},
	%% context_init requests of the current generation not answered yet (id => ctx), and whether the
	%% port knows context_init (and so the nested flag and drain).
	inits = #{} :: #{non_neg_integer() => non_neg_integer()},
	nested = false :: boolean(),
	%% opsb: recycling (py_recycle): requests answered by this OS process, the limits read at its
	%% start, and whether it is being recycled (condemned, waiting for its requests in flight).
	served = 0 :: non_neg_integer(),
	recycle = #{} :: map(),
	recycling = false :: boolean()
}).

-define(HELLO, 64).
-define(RESULT, 65).
-define(ERROR, 66).
-define(CALLBACK, 67).
-define(SEND, 68).
-define(OUTPUT, 69).
-define(PROTOCOL_ERROR, 70).
-define(ENV_CREATED, 71).
-define(STREAM_CHUNK, 72).
-define(STREAM_END, 73).
-define(LOG, 74).
-define(REQUEUE, 75).
-define(SCHEDULE, 94).
-define(SPAN, 88).  %% opsa (§3.14)
-define(TASK_RESULT, 76).  %% aio (§3.10)
-define(SHM_CONSUMED, 83).  %% bulk (§3.12)

%% The port exits with 5 when a cancelled request holds the GIL and cannot even be interrupted
%% (its --cancel-stuck-ms watchdog): like our grace timer expiring, so reported the same way.
-define(EXIT_CANCEL_STUCK, 5).

-define(MAX_BACKOFF, 5000).
-define(FAST_DEATH_MS, 1000).
-define(HEALTHY_MS, 60000).

%% API.

-spec start_link(pos_integer(), opts()) -> {ok, pid()} | {error, term()}.
start_link(Slot, Opts) ->
	gen_server:start_link(?MODULE, {Slot, Opts}, []).

-spec child_spec(pos_integer(), opts()) -> supervisor:child_spec().
child_spec(Slot, Opts) ->
	#{id => {py_port, Slot}, start => {?MODULE, start_link, [Slot, Opts]},
		restart => permanent, shutdown => 10000, type => worker, modules => [?MODULE]}.

%% The published state of a slot, or undefined when no owner runs it.
-spec info(pos_integer()) -> info() | undefined.
info(Slot) ->
	persistent_term:get({py_port, Slot}, undefined).

%% Waits until the slot is up with a generation newer than SeenGeneration (0: any); {error, Why} when
%% the owner stops meanwhile.
-spec wait_ready(pid(), non_neg_integer(), timeout()) -> {ok, info()} | {error, term()}.
wait_ready(Owner, SeenGeneration, Timeout) ->
	gen_server:call(Owner, {wait_ready, SeenGeneration}, Timeout).

%% A caller gave up on request Id and sent the cancel frame: start the grace timer. A call, so that
%% when it returns every frame the owner forwarded for Id is in the caller's mailbox (the caller
%% took Id's entry before, so nothing more comes). An owner that is gone or slow past Timeout: ok.
-spec cancel_watch(pid(), non_neg_integer(), non_neg_integer(), timeout()) -> ok.
cancel_watch(Owner, Id, Generation, Timeout) ->
	try gen_server:call(Owner, {cancel_watch, Id, Generation}, Timeout)
	catch exit:_ -> ok
	end.

%% Returns once the owner handled everything sent to it before; what it forwarded to the caller
%% before is then in the caller's mailbox. An owner that is gone or slow past Timeout: ok.
-spec sync(pid(), timeout()) -> ok.
sync(Owner, Timeout) ->
	try gen_server:call(Owner, sync, Timeout)
	catch exit:_ -> ok
	end.

%% Returns once cancelled request Id (sent to OS process Generation) is over: its final frame arrived,
%% or that OS process died. A caller calls it before its next request, so that request does not queue
%% behind one that is still being cancelled (and, if that one is stuck in C code, die with its port).
-spec await_cancel(pid(), non_neg_integer(), non_neg_integer(), timeout()) -> ok.
await_cancel(Owner, Id, Generation, Timeout) ->
	try gen_server:call(Owner, {await_cancel, Id, Generation}, Timeout)
	catch exit:_ -> ok
	end.

%% The ids of the cancelled requests of Slot whose grace timer runs (their final frame is awaited).
-spec pending_cancels(pos_integer()) -> [non_neg_integer()].
pending_cancels(Slot) ->
	#{owner := Owner} = info(Slot),
	gen_server:call(Owner, pending_cancels).

%% Process Pid is gone (a killed callback helper or spawn_call worker): its requests in flight on
%% any slot are cancelled like a dead caller's, and their entries removed. Runs in the calling
%% process (the table scan stays out of the owners).
-spec forget_caller(pid()) -> ok.
forget_caller(Pid) ->
	_ = [cancel_requests(Pid, Slot, Port, Codec, Owner, Gen)
		|| Slot <- py_pool_ports:all_slots(),
			#{status := St, port := Port, codec := Codec, owner := Owner, generation := Gen} <- [info(Slot)],
			St =/= down],
	ok.

%% Where the port of Slot writes its faulthandler output.
-spec crash_file(pos_integer()) -> file:filename().
crash_file(Slot) ->
	Dir = case os:getenv("TMPDIR") of
		false -> "/tmp";
		"" -> "/tmp";
		D -> D
	end,
	filename:join(Dir, lists:flatten(io_lib:format("erlang_python.~s.~b.crash", [os:getpid(), Slot]))).

%% gen_server.

-spec init({pos_integer(), opts()}) -> {ok, #state{}} | {stop, term()}.
init({Slot, Opts}) ->
	process_flag(trap_exit, true),
	Priv = code:priv_dir(erlang_python),
	CrashFile = crash_file(Slot),
	Args = ["--codec", atom_to_list(maps:get(codec, Opts)),
		"--contexts", integer_to_list(maps:get(contexts, Opts)),
		"--pylib", filename:join(Priv, "pylib"),
		"--crash-file", CrashFile]
		++ case maps:get(spin_us, Opts) of
			0 -> [];
			Spin -> ["--spin-us", integer_to_list(Spin)]
		end
		++ case maps:get(max_frame, Opts, 0) of
			0 -> [];
			Max -> ["--max-frame", integer_to_list(Max)]
		end
		++ py_shm:port_args(),  %% bulk (PROTOCOL.md §3.12)
	%% port_executable: another build of the port (e.g. the sanitizer build tools/test.sh runs); a
	%% pool's own ports (py_pool_ports: a pool with a Python of its own) name their executable in Opts.
	Exe = maps:get(port_executable, Opts,
		application:get_env(erlang_python, port_executable, filename:join(Priv, "erlang_python_port"))),
	State0 = #state{slot = Slot, opts = Opts, exe = Exe,
		args = Args, crash_file = CrashFile},
	publish_down(State0),
	%% Requests left by a previous owner of this slot that crashed: nobody will answer them.
	fail_inflight(Slot, #{exit_status => undefined, signal => undefined, traceback => <<>>,
		reason => owner_down}),
	ok = py_context:port_exited(Slot, all, #{exit_status => undefined, signal => undefined,
		traceback => <<>>, reason => owner_down}),
	%% The first start is synchronous: the application is only up once every slot said hello, and a
	%% port that cannot start (no executable, Python broken) fails the application start loudly.
	try start_os_process(State0) of
		State1 -> await_first_hello(State1, maps:get(start_timeout, Opts, 60000))
	catch error:Why ->
		_ = persistent_term:erase({py_port, Slot}),
		{stop, {port_start_failed, #{reason => Why, exe => State0#state.exe}}}
	end.

-spec handle_call({wait_ready, non_neg_integer()} | {await_cancel, non_neg_integer(), non_neg_integer()}
	| {cancel_watch, non_neg_integer(), non_neg_integer()} | sync | pending_cancels, gen_server:from(), #state{})
	-> {reply, term(), #state{}} | {noreply, #state{}}.
handle_call({wait_ready, Seen}, _From, State = #state{status = up, generation = Gen, info = Info})
		when Gen > Seen ->
	{reply, {ok, Info}, State};
handle_call({wait_ready, Seen}, From, State = #state{waiters = Waiters}) ->
	{noreply, State#state{waiters = [{From, Seen} | Waiters]}};
handle_call({await_cancel, Id, Gen}, From, State = #state{generation = Gen, status = up, cancels = Cancels,
		cancel_waiters = Waiters}) when is_map_key(Id, Cancels) ->
	{noreply, State#state{cancel_waiters = maps:update_with(Id, fun(L) -> [From | L] end, [From], Waiters)}};
handle_call({await_cancel, _, _}, _From, State) ->
	%% Already over, or its OS process is gone (the next request waits for the new one).
	{reply, ok, State};
handle_call(pending_cancels, _From, State = #state{cancels = Cancels}) ->
	{reply, lists:sort(maps:keys(Cancels)), State};
handle_call({cancel_watch, Id, Gen}, _From, State = #state{generation = Gen, status = up}) ->
	{reply, ok, watch_cancel(Id, State)};
handle_call({cancel_watch, _, _}, _From, State) ->
	%% An older OS process, already gone.
	{reply, ok, State};
handle_call(sync, _From, State) ->
	{reply, ok, State}.

-spec handle_cast(term(), #state{}) -> {noreply, #state{}}.
handle_cast(Msg, State) ->
	log(warning, "py_port ~b got an unexpected cast ~tp", [State#state.slot, Msg], State),
	{noreply, State}.

-spec handle_info(term(), #state{}) -> {noreply, #state{}}.
handle_info({Port, {data, Frame}}, State = #state{port = Port}) ->
	{noreply, frame(Frame, Port, State)};
handle_info({Port, {data, _}}, State) when is_port(Port) ->
	%% A port that is no longer ours (an OS process already replaced, or a kill program).
	{noreply, State};
handle_info({Port, {exit_status, Status}}, State = #state{port = Port}) ->
	{noreply, port_died(Status, State)};
handle_info({Port, {exit_status, _}}, State) when is_port(Port) ->
	{noreply, State};
handle_info({'EXIT', Port, Reason}, State = #state{port = Port}) ->
	%% Our port closed without an exit status first: the VM closes it when a write fails (EPIPE: the
	%% process exited while a large frame was going out), and then the status may never come. Take
	%% it if it is right behind; make sure the OS process is gone either way.
	Status = receive
		{Port, {exit_status, S}} -> S
	after 200 ->
		%% The port is closed, so only the start time in /proc tells the pid is still ours.
		_ = kill_if_ours(State#state.os_pid, State#state.os_start, "-KILL"),
		log(warning, "port ~b closed (~tp) without an exit status", [State#state.slot, Reason], State),
		undefined
	end,
	{noreply, port_died(Status, State)};
handle_info({'EXIT', Port, _}, State) when is_port(Port) ->
	%% An older port, or one that follows its exit_status: nothing left to do.
	{noreply, State};
handle_info({'EXIT', _Pid, Reason}, State) ->
	%% Our supervisor is leaving: stop, so terminate/2 closes the port.
	{stop, Reason, State};
handle_info({'DOWN', MRef, process, Pid, _}, State = #state{envs = Envs, callees = Callees}) ->
	ok = py_shm:reader_gone(Pid, State#state.port, codec(State)),  %% bulk2: its unread reply regions
	case {maps:take(Pid, Envs), maps:take(Pid, Callees)} of
		{{MRef, Envs1}, _} ->
			send_to_port(py_codec:frame(env_drop, 0, 0, codec(State), Pid), State),
			{noreply, cancel_requests_of(Pid, State#state{envs = Envs1})};
		{_, {MRef, Callees1}} ->
			{noreply, cancel_requests_of(Pid, State#state{callees = Callees1})};
		_ ->
			{noreply, State}
	end;
handle_info({cancel_expired, Id, Gen}, State = #state{generation = Gen, cancels = Cancels,
		kill_reason = Kill}) when Kill =/= undefined ->
	%% The port is being killed already: one kill, one warning.
	{noreply, State#state{cancels = maps:remove(Id, Cancels)}};
handle_info({cancel_expired, Id, Gen}, State = #state{generation = Gen, cancels = Cancels,
		os_pid = OsPid, status = up}) ->
	case maps:take(Id, Cancels) of
		{_, Cancels1} ->
			log(warning, "request ~b on port ~b (os pid ~b) ignored its cancel for ~b ms; killing the port",
				[Id, State#state.slot, OsPid, maps:get(cancel_grace_ms, State#state.opts)], State),
			%% Condemned first: no new work goes there, and what it has not started comes back.
			State1 = condemn(State#state{cancels = Cancels1}),
			{noreply, kill_with_dump(State1, cancel_grace_expired)};
		error ->
			{noreply, State}
	end;
handle_info({cancel_expired, _, _}, State) ->
	{noreply, State};
handle_info({init_timeout, Gen}, State = #state{generation = Gen, status = starting, inits = Inits,
		os_pid = OsPid}) when map_size(Inits) > 0 ->
	log(error, "port ~b (os pid ~p) did not answer context_init in time; killing it",
		[State#state.slot, OsPid], State),
	{noreply, kill_port(State, init_timeout)};
handle_info({init_timeout, _}, State) ->
	{noreply, State};
handle_info({kill_now, Gen}, State = #state{generation = Gen, port = Port}) when Port =/= undefined ->
	%% The SIGKILL after kill_with_dump's SIGUSR1.
	{noreply, signal_port("-KILL", State)};
handle_info({kill_now, _}, State) ->
	{noreply, State};
handle_info({hello_timeout, Gen}, State = #state{generation = Gen, status = starting}) ->
	%% Every start has a deadline for its hello, not just the first: a port that hangs in start-up
	%% is killed and counted as a failed start (schedule_restart backs off).
	log(error, "port ~b (os pid ~p) sent no hello within ~b ms; killing it",
		[State#state.slot, State#state.os_pid, start_timeout(State)], State),
	{noreply, kill_port(State, no_hello)};
handle_info({hello_timeout, _}, State) ->
	{noreply, State};
handle_info(restart, State = #state{status = down}) ->
	try start_os_process(State) of
		State1 -> {noreply, State1}
	catch error:Why ->
		log(error, "cannot start port ~b: ~tp", [State#state.slot, Why], State),
		Failure = #{exit_status => undefined, signal => undefined, traceback => <<>>, reason => crashed,
			error => Why},
		State1 = State#state{started_at = now_ms(), start_failure = Failure},
		publish_down(State1),
		{noreply, schedule_restart(State1, true)}
	end;
handle_info({rss_check, Gen}, State = #state{generation = Gen, status = up, recycling = false,
		recycle = #{max_rss := Max}, os_pid = OsPid}) ->
	case py_recycle:rss(OsPid) of
		Rss when is_integer(Rss), Rss > Max -> {noreply, recycle(max_rss, State)};
		_ -> {noreply, arm_rss_check(State)}
	end;
handle_info({rss_check, _}, State) ->
	{noreply, State};
handle_info({recycle_drain, Gen, Deadline}, State = #state{generation = Gen, status = up, recycling = true,
		slot = Slot}) ->
	%% Bounded: re-armed every 20 ms until nothing of this slot is in flight or the deadline passed.
	InFlight = ets:select_count(py_inflight, [{{'_', '_', Slot}, [], [true]}]),
	case InFlight =:= 0 orelse now_ms() >= Deadline of
		true ->
			{noreply, kill_port(State, recycled)};
		false ->
			_ = erlang:send_after(20, self(), {recycle_drain, Gen, Deadline}),
			{noreply, State}
	end;
handle_info({recycle_drain, _, _}, State) ->
	{noreply, State};
handle_info(Msg, State) ->
	log(warning, "py_port ~b got an unexpected message ~tp", [State#state.slot, Msg], State),
	{noreply, State}.

-spec terminate(term(), #state{}) -> ok.
terminate(Reason, State = #state{slot = Slot, port = Port, os_pid = OsPid}) ->
	_ = persistent_term:erase({py_port, Slot}),
	Why = case Reason of
		normal -> shutdown;
		shutdown -> shutdown;
		{shutdown, _} -> shutdown;
		_ -> owner_down
	end,
	fail_inflight(Slot, #{exit_status => undefined, signal => undefined, traceback => <<>>, reason => Why}),
	%% A new owner counts generations from 0 again: the explicit contexts of this one must go.
	ok = py_context:port_exited(Slot, State#state.generation, #{exit_status => undefined,
		signal => undefined, traceback => <<>>, reason => Why}),
	_ = [gen_server:reply(From, {error, Why}) || {From, _} <- State#state.waiters],
	case Port of
		undefined ->
			ok;
		_ ->
			%% EOF on its stdin makes the port exit (PROTOCOL.md §4.2); make sure it did.
			_ = catch port_close(Port),
			ensure_dead(OsPid, State#state.os_start),
			ok = py_shm:port_gone(OsPid)  %% bulk
	end,
	_ = file:delete(State#state.crash_file),
	ok.

%% Internal: starting.

start_os_process(State = #state{exe = Exe, args = Args, crash_file = CrashFile, generation = Gen}) ->
	_ = file:delete(CrashFile),
	Port = open_port({spawn_executable, Exe},
		%% env: the venv and sandbox of this start (py_venv, PROTOCOL.md §3.15).
		[{packet, 4}, binary, exit_status, use_stdio,
			{args, Args ++ py_record:port_args(State#state.slot, Gen + 1) ++ py_mem_limit:port_args()},  %% opsb
			{env, py_venv:port_env(State#state.opts)}]),
	{os_pid, OsPid} = erlang:port_info(Port, os_pid),
	State1 = State#state{port = Port, os_pid = OsPid, status = starting, generation = Gen + 1,
		served = 0, recycle = py_recycle:config(), recycling = false,
		started_at = now_ms(), kill_reason = undefined, killed = false, os_start = os_start_time(OsPid)},
	_ = erlang:send_after(start_timeout(State1), self(), {hello_timeout, Gen + 1}),
	State1.

start_timeout(#state{opts = Opts}) ->
	maps:get(start_timeout, Opts, 60000).

await_first_hello(State = #state{port = Port}, Timeout) ->
	receive
		{Port, {data, Frame}} ->
			%% Up once the hello came and every context answered its context_init.
			case frame(Frame, Port, State) of
				State1 = #state{status = up} -> {ok, State1};
				State1 -> await_first_hello(State1, Timeout)
			end;
		{Port, {exit_status, Status}} ->
			_ = persistent_term:erase({py_port, State#state.slot}),
			{stop, {port_start_failed, exit_reason(Status, State)}}
	after Timeout ->
		_ = kill_if_ours(State#state.os_pid, State#state.os_start, "-KILL"),
		_ = persistent_term:erase({py_port, State#state.slot}),
		{stop, {port_start_failed, no_hello}}
	end.

hello(Body, State = #state{slot = Slot, port = Port, generation = Gen, opts = Opts}) ->
	Codec = maps:get(codec, Opts),
	Hello = #{contexts := Contexts} = py_codec:decode(Codec, Body),
	Codec = maps:get(codec, Hello, Codec),
	Info = #{owner => self(), status => up, slot => Slot, port => Port, codec => Codec,
		contexts => list_to_tuple(Contexts), os_pid => maps:get(os_pid, Hello, State#state.os_pid),
		generation => Gen, python => maps:get(python, Hello, <<>>),
		build => maps:get(build, Hello, undefined), hello => Hello},
	ok = py_shm:port_up(maps:get(os_pid, Info)),  %% bulk: its request regions join the pool
	init_contexts(Contexts, State#state{info = Info}).

%% Sends context_init to every context of the new OS process; the slot goes up when all answered.
init_contexts(Contexts, State = #state{port = Port, generation = Gen, opts = Opts}) ->
	Body = py_import:context_init_body(),
	Inits0 = maps:from_list([{?INIT_BASE + erlang:unique_integer([positive]), Ctx} || Ctx <- Contexts]),
	_ = [catch port_command(Port, py_codec:frame(context_init, Ctx, Id, codec(State), Body))
		|| {Id, Ctx} <- maps:to_list(Inits0)],
	%% opsa: the logging/tracing configuration (py_ops), answered like a context_init (ctx 0).
	Inits = case py_ops:config_frame(codec(State), OpsId = ?INIT_BASE + erlang:unique_integer([positive])) of
		none -> Inits0;
		OpsFrame -> _ = catch port_command(Port, OpsFrame), Inits0#{OpsId => 0}
	end,
	_ = erlang:send_after(maps:get(start_timeout, Opts, 60000), self(), {init_timeout, Gen}),
	State#state{inits = Inits, nested = true}.

%% The answer to a context_init. An error is logged (the registry entry is broken, the port is not);
%% unknown_kind means a port that predates context_init: it gets no nested flags and no drain.
init_reply(Kind, Ctx, Id, Body, State = #state{inits = Inits, slot = Slot}) ->
	State1 = case {Kind, decode_quietly(Kind, Body, State)} of
		{?RESULT, _} ->
			State;
		{?PROTOCOL_ERROR, {unknown_kind, _}} ->
			State#state{nested = false};
		{_, Why} ->
			logger:error("erlang_python: port ~b context ~b: context_init failed: ~tp", [Slot, Ctx, Why]),
			State
	end,
	State2 = State1#state{inits = maps:remove(Id, Inits)},
	case map_size(State2#state.inits) of
		0 -> publish_up(State2);
		_ -> State2
	end.

publish_up(State = #state{slot = Slot, generation = Gen, waiters = Waiters, nested = Nested, info = Info0}) ->
	Info = Info0#{nested => Nested},
	ok = persistent_term:put({py_port, Slot}, Info),
	ok = py_stats:port_up(Slot, State#state.os_pid, Gen, State#state.started_at),  %% opsa: telemetry
	Ready = [From || {From, Seen} <- Waiters, Seen < Gen],
	_ = [gen_server:reply(From, {ok, Info}) || From <- Ready],
	arm_rss_check(State#state{status = up, info = Info, start_failure = undefined,
		waiters = [W || W = {_, Seen} <- Waiters, Seen >= Gen]}).

%% The owner is about to kill the port: no new work goes there (callers wait for the next generation
%% or move), and the port hands back what it has not started (PROTOCOL.md §3.7).
condemn(State = #state{slot = Slot, info = Info, status = up, nested = Nested}) ->
	Condemned = Info#{status => condemned},
	ok = persistent_term:put({py_port, Slot}, Condemned),
	_ = Nested andalso send_to_port(py_codec:frame(drain, 0, 0, codec(State), []), State),
	State#state{info = Condemned}.

%% While the slot is down its info says why its last start failed, if it did (py_request reports that
%% to callers whose deadline passes meanwhile).
publish_down(#state{slot = Slot, start_failure = Failure}) ->
	Info = #{owner => self(), status => down, slot => Slot},
	ok = persistent_term:put({py_port, Slot}, case Failure of
		undefined -> Info;
		_ -> Info#{start_failure => Failure}
	end).

%% Internal: frames from the port.

frame(<<Kind, 0, 0:16, Ctx:32, Id:64, Body/binary>>, Port, State) when Id =/= 0 ->
	frame(Kind, Ctx, Id, Body, Port, State);
frame(<<Kind, 2, 0:16, Ctx:32, Id:64, Desc/binary>>, Port, State) when Id =/= 0 ->
	%% bulk (PROTOCOL.md §3.12): the body is in a reply region; routed the same way, read by the caller.
	frame(Kind, Ctx, Id, {py_shm, Desc}, Port, watch_shm_reader(Id, Desc, State));
frame(<<Kind, 0, 0:16, Ctx:32, 0:64, Body/binary>>, Port, State) ->
	%% The owner decodes these itself; a body it cannot read is the port's bug, not a reason to take
	%% the whole slot down.
	guarded(fun() -> frame(Kind, Ctx, 0, Body, Port, State) end, Kind, Ctx, State);
frame(Bad, _Port, State) ->
	log(warning, "port ~b wrote an unreadable frame header: ~p",
		[State#state.slot, binary:part(Bad, 0, min(byte_size(Bad), 16))], State),
	State.

%% A context_init of ours: only its final frame answers it. Its output (a preload that prints) is
%% logged and acknowledged like a thread's; its callback (an erlang.call in a preload) is served like
%% a thread's.
frame(Kind, Ctx, Id, Body, _, State = #state{inits = Inits}) when is_map_key(Id, Inits),
		(Kind =:= ?RESULT orelse Kind =:= ?ERROR orelse Kind =:= ?PROTOCOL_ERROR) ->
	init_reply(Kind, Ctx, Id, Body, State);
frame(?OUTPUT, Ctx, Id, Body, _, State = #state{inits = Inits}) when is_map_key(Id, Inits) ->
	guarded(fun() -> log_output(Ctx, Id, thread, Body, State) end, ?OUTPUT, Ctx, State);
frame(?CALLBACK, Ctx, Id, Body, Port, State = #state{inits = Inits}) when is_map_key(Id, Inits) ->
	guarded(fun() -> frame(?CALLBACK, Ctx, 0, Body, Port, State) end, ?CALLBACK, Ctx, State);
frame(Kind, Ctx, Id, Body, _, State) when Id =/= 0, (Kind =:= ?RESULT orelse Kind =:= ?ERROR
		orelse Kind =:= ?PROTOCOL_ERROR orelse Kind =:= ?STREAM_END orelse Kind =:= ?REQUEUE orelse Kind =:= ?SCHEDULE) ->
	case ets:take(py_inflight, Id) of
		[{_, Pid, _}] ->
			Pid ! {py_frame, Id, Kind, Ctx, Body},
			served(Kind, State);
		[] ->
			orphan_final(Kind, Ctx, Id, py_shm:orphan_final(Id, Body, State#state.port, codec(State)), State)
	end;
frame(?CALLBACK, Ctx, Id, Body, Port, State) when Id =/= 0 ->
	case ets:lookup(py_inflight, Id) of
		[{_, Pid, _}] ->
			Pid ! {py_frame, Id, ?CALLBACK, Ctx, Body},
			watch_callee(Pid, State);
		[] ->
			guarded(fun() -> orphan(?CALLBACK, Ctx, Id, Body, Port, State) end, ?CALLBACK, Ctx, State)
	end;
frame(Kind, Ctx, Id, Body, Port, State) when Id =/= 0, (Kind =:= ?OUTPUT orelse Kind =:= ?STREAM_CHUNK) ->
	case ets:lookup(py_inflight, Id) of
		[{_, Pid, _}] ->
			Pid ! {py_frame, Id, Kind, Ctx, Body},
			State;
		[] ->
			guarded(fun() -> orphan(Kind, Ctx, Id, Body, Port, State) end, Kind, Ctx, State)
	end;
%% chan: channels, byte channels, buffers (PROTOCOL.md §3.11): a counter or an inbox insert.
frame(Kind, _, Id, Body, _, State) when Kind >= 80, Kind =< 82 ->
	guarded(fun() -> ok = py_chan:port_frame(Kind, Id, Body, codec(State)), State end, Kind, 0, State);
%% bulk (PROTOCOL.md §3.12): shm_consumed, a callback reply's request region is back (ETS only).
frame(?SHM_CONSUMED, _, 0, Body, _, State) ->
	ok = py_shm:consumed(State#state.os_pid, py_codec:decode(codec(State), Body)),
	State;
frame(?HELLO, _, 0, Body, Port, State = #state{port = Port}) ->
	hello(Body, State);
frame(?CALLBACK, Ctx, 0, Body, Port, State) ->
	Codec = codec(State),
	{_, Name, _} = py_codec:decode(Codec, Body),
	_ = case is_binary(Name) andalso py_callback:is_builtin(Name) of
		true -> ok = py_callback:handle_async(Port, Codec, Ctx, Body);
		false -> spawn(py_callback, handle_async, [Port, Codec, Ctx, Body])
	end,
	State;
frame(?SEND, Ctx, 0, Body, Port, State) ->
	Codec = codec(State),
	{CbId, Dest, Msg} = py_codec:decode(Codec, Body),
	Reply = deliver(Dest, Msg),
	_ = catch port_command(Port, py_codec:frame(callback_reply, Ctx, CbId, Codec, Reply)),
	State;
frame(?OUTPUT, Ctx, 0, Body, _, State) ->
	log_output(Ctx, 0, thread, Body, State);
frame(?PROTOCOL_ERROR, _, Id, Body, _, State) ->
	log(warning, "port ~b reports a protocol error (id ~b): ~tp",
		[State#state.slot, Id, py_codec:decode(codec(State), Body)], State),
	State;
frame(?ENV_CREATED, _, 0, Body, _, State = #state{envs = Envs, callees = Callees}) ->
	case py_codec:decode(codec(State), Body) of
		Pid when is_pid(Pid), is_map_key(Pid, Envs) -> State;
		Pid when is_pid(Pid) ->
			%% A callee's monitor becomes its environment's (its DOWN must also drop the environment).
			case maps:take(Pid, Callees) of
				{MRef, Callees1} -> State#state{envs = Envs#{Pid => MRef}, callees = Callees1};
				error -> State#state{envs = Envs#{Pid => erlang:monitor(process, Pid)}}
			end;
		%% An explicit environment (a reference): its context process frees it (py_context).
		_ -> State
	end;
%% aio: asyncio task outcomes (PROTOCOL.md §3.10), each sent to its caller by py_event_loop.
frame(?TASK_RESULT, 0, 0, Body, _, State) ->
	ok = py_event_loop:route_outcomes(Body),
	State;
%% opsa: Python log records and spans (PROTOCOL.md §3.14) go undecoded to py_ops_sink (one send).
frame(Kind, _, 0, Body, Port, State) when Kind =:= ?LOG; Kind =:= ?SPAN ->
	ok = py_ops_sink:forward(State#state.slot, Port, codec(State), Kind, Body),
	State;
frame(Kind, Ctx, Id, Body, _, State) ->
	log(warning, "port ~b wrote an unexpected frame: kind ~b ctx ~b id ~b, ~b body bytes",
		[State#state.slot, Kind, Ctx, Id, byte_size(Body)], State),
	State.

guarded(Fun, Kind, Ctx, State) ->
	try
		Fun()
	catch Class:Reason:Stack ->
		log(error, "port ~b wrote a frame the owner cannot handle (kind ~b ctx ~b): ~tp",
			[State#state.slot, Kind, Ctx, {Class, Reason, Stack}], State),
		State
	end.

%% bulk2: the reader of a reply region is watched like a callee (its death hands the region back,
%% py_shm:reader_gone/3). A frame nobody waits for is read by the orphan path, not watched.
watch_shm_reader(Id, Desc, State) ->
	case ets:lookup(py_inflight, Id) of
		[{_, Pid, _}] ->
			ok = py_shm:forwarded(State#state.os_pid, Desc, Pid),
			watch_callee(Pid, State);
		[] ->
			State
	end.

%% Monitors Pid, which a callback frame was just forwarded to, unless it is monitored already (see
%% callees). Only callback frames and frames with a body in a reply region (watch_shm_reader/3, bulk2)
%% come here: other results and output never pay for it.
watch_callee(Pid, State = #state{envs = Envs}) when is_map_key(Pid, Envs) ->
	State;
watch_callee(Pid, State = #state{callees = Callees}) when is_map_key(Pid, Callees) ->
	State;
watch_callee(Pid, State = #state{callees = Callees}) ->
	State#state{callees = Callees#{Pid => erlang:monitor(process, Pid)}}.

%% A final frame for a request nobody waits for: a request whose caller timed out and cancelled it
%% (stop its grace timer), or a cast that could not run.
orphan_final(Kind, _Ctx, Id, Body, State = #state{cancels = Cancels, done_early = Done})
		when Id >= ?REQ_BASE, Id < ?CAST_BASE ->
	_ = Kind, _ = Body,
	case maps:take(Id, Cancels) of
		{TRef, Cancels1} ->
			_ = erlang:cancel_timer(TRef),
			release_cancel_waiters(Id, State#state{cancels = Cancels1});
		error ->
			%% The caller took its entry but its cancel_watch cast has not arrived yet.
			State#state{done_early = Done#{Id => true}}
	end;
orphan_final(Kind, Ctx, Id, Body, State) when Id >= ?CTRL_BASE, Id < ?REQ_BASE ->
	%% A context request whose caller stopped waiting (they are never cancelled or watched).
	log(info, "port ~b context ~b answered context request ~b after its caller gave up (kind ~b): ~tp",
		[State#state.slot, Ctx, Id, Kind, decode_quietly(Kind, Body, State)], State),
	State;
orphan_final(?REQUEUE, _Ctx, Id, _Body, State) when Id >= ?CAST_BASE ->
	%% Casts keep no body on the Erlang side, so one the condemned port did not start is lost.
	logger:warning("erlang_python: a py:cast queued on condemned port ~b was dropped", [State#state.slot]),
	State;
orphan_final(Kind, _Ctx, Id, Body, State) when Id >= ?CAST_BASE ->
	log(warning, "a py:cast on port ~b failed: ~tp", [State#state.slot, decode_quietly(Kind, Body, State)],
		State),
	State;
orphan_final(Kind, _Ctx, Id, Body, State) ->
	log(warning, "port ~b answered id ~b that no request has (kind ~b): ~tp",
		[State#state.slot, Id, Kind, decode_quietly(Kind, Body, State)], State),
	State.

%% A callback or output for a request nobody waits for any more (its caller timed out).
orphan(Kind, Ctx, Id, {py_shm, _} = Body, Port, State) ->
	%% bulk: its body is in a reply region; read (and the region handed back) outside the owner.
	_ = spawn(py_shm, orphan, [Kind, Ctx, Id, Body, Port, codec(State)]),
	State;
orphan(?CALLBACK, Ctx, _Id, Body, Port, State) ->
	Codec = codec(State),
	{CbId, _, _} = py_codec:decode(Codec, Body),
	Reply = {error, <<"error">>, <<"the Erlang caller of this request stopped waiting (timeout)">>},
	_ = catch port_command(Port, py_codec:frame(callback_reply, Ctx, CbId, Codec, Reply)),
	State;
orphan(?OUTPUT, Ctx, Id, Body, _, State) ->
	log_output(Ctx, Id, orphan, Body, State);
orphan(_, _, _, _, _, State) ->
	State.

%% Output nobody waits for goes to the log. From a thread that serves no request (id 0) or from our
%% own context_init (a preload): stdout at notice and stderr at warning, so both show at the default
%% level. Of a request whose caller stopped waiting (orphan: it timed out; the request is being
%% cancelled): at info, or a flood would flood the log too. Either way it is acknowledged (for id
%% Id), or the port's output window (PROTOCOL.md §3.5) would stay full and block the printer.
log_output(Ctx, Id, From, Body, State) ->
	{Stream, Text} = py_codec:decode(codec(State), Body),
	Level = if
		From =:= orphan -> info;
		Stream =:= 2 -> warning;
		true -> notice
	end,
	log(Level, "port ~b ~s: ~ts", [State#state.slot, stream_name(Stream), Text], State),
	Size = if is_binary(Text) -> byte_size(Text); true -> 0 end,
	send_to_port(py_codec:frame(output_ack, Ctx, Id, codec(State), Size), State),
	State.

decode_quietly(Kind, Body, State) ->
	try py_codec:decode(codec(State), Body)
	catch _:_ -> {undecodable, Kind, Body}
	end.

%% erlang.send: Dest is a pid, a registered name (binary) or {Name, Node}.
deliver(Pid, Msg) when is_pid(Pid) ->
	case node(Pid) =:= node() andalso not is_process_alive(Pid) of
		true ->
			{error, noproc, iolist_to_binary(io_lib:format("process ~p is not alive", [Pid]))};
		false ->
			Pid ! Msg,
			{ok, true}
	end;
deliver({Name, Node}, Msg) ->
	case {existing_atom(Name), existing_atom(Node)} of
		{N, Nd} when is_atom(N), Nd =:= node() ->
			deliver(N, Msg);
		{N, Nd} when is_atom(N), is_atom(Nd) ->
			erlang:send({N, Nd}, Msg),
			{ok, true};
		_ ->
			{error, noproc, iolist_to_binary(io_lib:format("no process registered as ~tp on ~tp", [Name, Node]))}
	end;
deliver(Name, Msg) ->
	case existing_atom(Name) of
		Atom when is_atom(Atom) ->
			case whereis(Atom) of
				undefined -> {error, noproc, noproc_text(Name)};
				Pid -> Pid ! Msg, {ok, true}
			end;
		_ ->
			{error, noproc, noproc_text(Name)}
	end.

noproc_text(Name) ->
	iolist_to_binary(io_lib:format("no process registered as ~tp", [Name])).

existing_atom(A) when is_atom(A) -> A;
existing_atom(B) when is_binary(B) ->
	try binary_to_existing_atom(B, utf8)
	catch error:badarg -> B
	end;
existing_atom(Other) -> Other.

stream_name(1) -> "stdout";
stream_name(2) -> "stderr";
stream_name(N) -> io_lib:format("stream ~p", [N]).

%% Watches cancelled request Id: its final frame must come within the grace period, or the port is
%% killed (cancel_expired).
watch_cancel(Id, State = #state{generation = Gen, done_early = Done, cancels = Cancels,
		opts = #{cancel_grace_ms := Grace}}) ->
	case maps:take(Id, Done) of
		{true, Done1} ->
			%% Its final frame came first: nothing to watch.
			State#state{done_early = Done1};
		error ->
			TRef = erlang:send_after(Grace, self(), {cancel_expired, Id, Gen}),
			State#state{cancels = Cancels#{Id => TRef}}
	end.

%% A caller died: nobody will read its replies or answer its callbacks (a request waiting on one would
%% wait forever). Its requests are cancelled like timed-out ones; the port finds their contexts. The
%% scan of py_inflight (O(in flight)) runs in a short-lived process, not in the owner that routes for
%% everyone; it ends after one pass.
cancel_requests_of(Pid, State = #state{slot = Slot, status = up, port = Port, generation = Gen}) ->
	Owner = self(),
	Codec = codec(State),
	_ = spawn(fun() -> cancel_requests(Pid, Slot, Port, Codec, Owner, Gen) end),
	State;
cancel_requests_of(_, State) ->
	State.

%% Takes Pid's entries of Slot and cancels their requests (each watched by the owner like a timed-out
%% caller's). Context requests are not cancelled: the port cannot end them early, and a cancel would
%% only get the port killed when its grace runs out; their late answer is dropped (orphan_final).
cancel_requests(Pid, Slot, Port, Codec, Owner, Gen) ->
	Ids = ets:select(py_inflight, [{{'$1', Pid, Slot}, [], ['$1']}]),
	_ = [case ets:take(py_inflight, Id) of
		[_] when Id >= ?CTRL_BASE, Id < ?REQ_BASE ->
			ok;
		[_] ->
			_ = catch port_command(Port, py_codec:frame(cancel, 0, Id, Codec, [])),
			cancel_watch(Owner, Id, Gen, 5000);
		[] ->
			ok
	end || Id <- Ids],
	ok.

release_cancel_waiters(Id, State = #state{cancel_waiters = Waiters}) ->
	case maps:take(Id, Waiters) of
		{Froms, Waiters1} ->
			_ = [gen_server:reply(From, ok) || From <- Froms],
			State#state{cancel_waiters = Waiters1};
		error ->
			State
	end.

%% Internal: death and restart.

port_died(Status, State0 = #state{slot = Slot, envs = Envs, callees = Callees, cancels = Cancels,
		status = Was}) ->
	Reason = exit_reason(Status, State0),
	FailedStart = Was =:= starting,
	State = case FailedStart of
		true -> State0#state{start_failure = Reason};
		false -> State0
	end,
	if
		FailedStart ->
			log(error, "port ~b (os pid ~p) failed to start: ~tp~n~ts",
				[Slot, State#state.os_pid, maps:remove(traceback, Reason), maps:get(traceback, Reason)], State);
		Status =:= 0 ->
			log(warning, "port ~b exited", [Slot], State);
		State#state.kill_reason =:= recycled ->
			log(info, "port ~b (os pid ~p) recycled", [Slot, State#state.os_pid], State);
		true ->
			log(error, "port ~b (os pid ~p) died: ~tp", [Slot, State#state.os_pid, Reason], State)
	end,
	publish_down(State),
	ok = py_shm:port_gone(State#state.os_pid),  %% bulk: its region files go before its callers hear
	fail_inflight(Slot, Reason),
	ok = py_stats:port_exit(Slot, State#state.os_pid, now_ms() - State#state.started_at, Reason),  %% opsa
	ok = py_context:port_exited(Slot, State#state.generation, Reason),
	_ = [erlang:demonitor(MRef, [flush]) || MRef <- maps:values(Envs) ++ maps:values(Callees)],
	_ = [erlang:cancel_timer(TRef) || TRef <- maps:values(Cancels)],
	_ = [gen_server:reply(From, ok) || Froms <- maps:values(State#state.cancel_waiters), From <- Froms],
	schedule_restart(State#state{port = undefined, status = down, envs = #{}, callees = #{}, cancels = #{}, cancel_waiters = #{},
		done_early = #{}, info = #{}, inits = #{}}, FailedStart orelse self_inflicted(Status, State#state.kill_reason)).

%% Whether a death counts against the port's restart backoff. Not when we killed it (a cancel that
%% was ignored: the request's fault, not the port's), when it gave up on such a request itself
%% (status 5), when something outside killed it with SIGKILL, or when its port closed under it (no
%% exit status).
self_inflicted(_, Kill) when Kill =/= undefined -> false;
self_inflicted(undefined, _) -> false;
self_inflicted(?EXIT_CANCEL_STUCK, _) -> false;
self_inflicted(Status, _) -> signal(Status) =/= sigkill.

exit_reason(Status, #state{crash_file = CrashFile, kill_reason = Kill}) ->
	Traceback = case file:read_file(CrashFile) of
		{ok, Bin} -> Bin;
		{error, _} -> <<>>
	end,
	_ = file:delete(CrashFile),
	#{exit_status => Status,
	  signal => signal(Status),
	  traceback => Traceback,
	  reason => if
		Kill =/= undefined -> Kill;
		Status =:= ?EXIT_CANCEL_STUCK -> cancel_grace_expired;
		true -> crashed
	  end}.

signal(S) when is_integer(S), S > 128 ->
	case S - 128 of
		6 -> sigabrt;
		7 -> sigbus;
		8 -> sigfpe;
		9 -> sigkill;
		11 -> sigsegv;
		15 -> sigterm;
		N -> {signal, N}
	end;
signal(_) ->
	undefined.

%% Every caller with a request in flight on Slot gets the reason. ets:take per entry, so a caller that
%% is timing out at the same moment gets exactly one outcome.
fail_inflight(Slot, Reason) ->
	Ids = ets:select(py_inflight, [{{'$1', '_', Slot}, [], ['$1']}]),
	_ = [case ets:take(py_inflight, Id) of
		[{_, Pid, _}] -> Pid ! {py_frame, Id, port_exited, 0, Reason};
		[] -> ok
	end || Id <- Ids],
	ok = py_event_loop:port_exited(Slot, Reason).  %% aio: tasks in flight there

%% Restart at once, unless the port keeps dying of its own accord within a second of its start, or
%% keeps failing to start: then the delays are 0, 100 ms, 200 ms, ... up to 5 s. A minute of health
%% forgets the history. A death the port did not cause (Counts false) never adds to it.
schedule_restart(State = #state{started_at = Started, backoff = FastDeaths}, Counts) ->
	Uptime = now_ms() - Started,
	{Delay, FastDeaths1} = if
		Uptime >= ?HEALTHY_MS, State#state.start_failure =:= undefined -> {0, 0};
		not Counts -> {0, FastDeaths};
		State#state.start_failure =/= undefined; Uptime < ?FAST_DEATH_MS ->
			{restart_delay(FastDeaths), FastDeaths + 1};
		true -> {0, FastDeaths}
	end,
	_ = erlang:send_after(Delay, self(), restart),
	ok = py_stats:port_restart(State#state.slot, Delay),  %% opsa: restarts counter, telemetry
	State#state{backoff = FastDeaths1}.

restart_delay(0) -> 0;
restart_delay(N) -> min(100 bsl (N - 1), ?MAX_BACKOFF).

%% Kills the OS process once, because of Why (reported as the death's reason). Its exit_status then
%% comes through the port as for any death.
kill_port(State, Why) ->
	signal_port("-KILL", State#state{kill_reason = Why}).

%% SIGUSR1 first: the port registers faulthandler on it, so every thread's traceback (the stuck
%% request's included) lands in the crash file; the SIGKILL follows 100 ms later (kill_now). The
%% owner goes on routing meanwhile.
kill_with_dump(State = #state{killed = true}, _Why) ->
	State;
kill_with_dump(State = #state{kill_reason = Already}, _Why) when Already =/= undefined ->
	State;
kill_with_dump(State = #state{generation = Gen}, Why) ->
	_ = signal(State, "-USR1"),
	_ = erlang:send_after(100, self(), {kill_now, Gen}),
	State#state{kill_reason = Why}.

%% At most one SIGKILL per OS process (killed), and only while its port is open and has not reported
%% an exit status: until the VM has reaped the process (which is when it sends exit_status) its pid
%% cannot belong to anybody else. An exit_status already waiting in the mailbox is taken first.
signal_port(_, State = #state{killed = true}) ->
	State;
signal_port(Sig, State = #state{port = Port}) ->
	case exited(Port) of
		{true, Status} ->
			port_died(Status, State);
		false ->
			_ = signal(State, Sig),
			State#state{killed = true}
	end.

exited(undefined) ->
	{true, undefined};
exited(Port) ->
	receive
		{Port, {exit_status, Status}} -> {true, Status}
	after 0 ->
		false
	end.

signal(#state{os_pid = OsPid, os_start = Start}, Sig) ->
	kill_if_ours(OsPid, Start, Sig).

%% Sends Sig with the kill program (no shell) to OsPid, if /proc still shows the process we started
%% (same start time; where /proc is missing the port's open state above is the only check).
kill_if_ours(undefined, _, _) ->
	false;
kill_if_ours(OsPid, Start, Sig) ->
	case Start =:= undefined orelse os_start_time(OsPid) =:= Start of
		true ->
			case os:find_executable("kill") of
				false ->
					false;
				Kill ->
					_ = catch open_port({spawn_executable, Kill},
						[{args, [Sig, integer_to_list(OsPid)]}, exit_status, in]),
					true
			end;
		false ->
			false
	end.

%% The start time of OS process OsPid (field 22 of /proc/<pid>/stat), or undefined (no /proc, or it
%% is gone or a zombie).
os_start_time(OsPid) ->
	case file:read_file("/proc/" ++ integer_to_list(OsPid) ++ "/stat") of
		{ok, Stat} ->
			case binary:split(Stat, <<") ">>) of
				[_, Rest] ->
					case binary:split(Rest, <<" ">>, [global]) of
						[State | _] when State =:= <<"Z">>; State =:= <<"X">> -> undefined;
						Fields when length(Fields) >= 20 -> lists:nth(20, Fields);
						_ -> undefined
					end;
				_ ->
					undefined
			end;
		{error, _} ->
			undefined
	end.

%% After its stdin closed (terminate): waits at most 2 s for the OS process to go, then SIGKILLs it
%% if /proc still shows the process we started.
ensure_dead(undefined, _) ->
	ok;
ensure_dead(OsPid, Start) ->
	ensure_dead(OsPid, Start, 200).

ensure_dead(OsPid, Start, Tries) ->
	case os_start_time(OsPid) of
		undefined ->
			ok;
		Now when Now =/= Start, Start =/= undefined ->
			ok;
		_ when Tries =:= 0 ->
			_ = kill_if_ours(OsPid, Start, "-KILL"),
			ok;
		_ ->
			timer:sleep(10),
			ensure_dead(OsPid, Start, Tries - 1)
	end.

log(Level, Format, Args, State) ->
	logger:log(Level, "erlang_python: " ++ Format, Args, log_meta(State)).

%% Logger metadata of everything the owner logs (logger adds the owner's pid itself).
log_meta(#state{slot = Slot, os_pid = OsPid}) ->
	#{domain => [erlang_python], port => Slot, os_pid => OsPid}.

%% Whenever the port is open, also while it starts (acks of a preload's output, PROTOCOL.md §3.5).
send_to_port(_, #state{port = undefined}) ->
	ok;
send_to_port(Frame, #state{port = Port}) ->
	_ = catch port_command(Port, Frame),
	ok.

codec(#state{opts = #{codec := Codec}}) ->
	Codec.

now_ms() ->
	erlang:monotonic_time(millisecond).

%% opsb: recycling (py_recycle). A final frame routed to its caller counts as a request served.
served(?REQUEUE, State) ->
	State;
served(_, State = #state{served = N, recycle = Config, status = up, recycling = false}) ->
	State1 = State#state{served = N + 1},
	case py_recycle:due(N + 1, Config) of
		true -> recycle(max_requests, State1);
		false -> State1
	end;
served(_, State) ->
	State.

%% Condemned (new work goes elsewhere, queued requests come back as requeue), then killed once its
%% requests in flight are done (recycle_drain) and restarted at once (a recycle never counts as a
%% fast death).
recycle(Why, State = #state{generation = Gen, recycle = #{drain_ms := DrainMs}, nested = true}) ->
	log(info, "recycling port ~b (os pid ~p): ~p after ~b requests",
		[State#state.slot, State#state.os_pid, Why, State#state.served], State),
	State1 = condemn(State),
	self() ! {recycle_drain, Gen, now_ms() + DrainMs},
	State1#state{recycling = true};
recycle(_, State) ->
	%% A port without drain (it predates context_init) is not recycled.
	State.

arm_rss_check(State = #state{recycle = #{max_rss := Max, rss_check_ms := Ms}, generation = Gen})
		when is_integer(Max) ->
	_ = erlang:send_after(Ms, self(), {rss_check, Gen}),
	State;
arm_rss_check(State) ->
	State.
