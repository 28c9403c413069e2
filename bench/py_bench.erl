%% @doc The erlang_python benchmark: our port against a bare echo port on the same machine.
%%
%% Run it with `bench/run.sh' from the repository root; it builds what is needed and calls `main/0'.
%% It prints one table (and writes it to bench/results/latest.txt): for each metric our number, the
%% baseline's number, their ratio and, where BRIEF.md sets one, the target and whether it is met.
%%
%% The baseline is `_build/bench/echo_port' (bench/echo_port.cpp), which echoes {packet,4} frames. It
%% is driven the way the application drives its port: the caller encodes its request (16-byte header,
%% term_to_binary body) and port_commands it; the caller decodes the reply. For concurrent callers an
%% owner process receives the frames and forwards each to its caller by the request id in the header,
%% looked up in an ETS table.
%%
%% The two sides of a comparison run interleaved, in rounds (ours, echo, ours, echo, ...), so that a
%% busy neighbour on a shared machine slows both and the ratio stays meaningful.
%%
%% Adding a row is one function: write `row_xxx(Ctx) -> {[Row], Ctx}' (build rows with `row/6') and
%% add it to `rows/0'. The sides of a comparison are "variants" (see `compare_latency/3'); one that
%% crashes or hangs prints "n/a" with a footnote instead of stopping the run.
%%
%% Environment:
%%   BENCH_QUICK=1        smoke run for CI, under 30 s (fewer iterations, 2 s throughput runs)
%%   BENCH_CALLERS=N      concurrent callers for throughput (default 100)
%%   BENCH_NUM_PORTS, BENCH_CONTEXTS, BENCH_CODEC, BENCH_SPIN_US
%%                        override the app env num_ports, contexts_per_port, codec, spin_us
%%   BENCH_ECHO_SPIN_US   the echo port's spin window (default: the app's spin_us, else the port's)
%%   BENCH_OUT            where to write the table (default bench/results/latest.txt)
%%   BENCH_ROWS           only the rows whose names contain one of these (comma-separated), e.g. asyncio
%% and, read by bench/run.sh: BENCH_NO_BUILD=1 (no rebar3 compile), BENCH_APP_DIR (measure an app
%% built elsewhere: the directory holding its ebin/ and priv/), BENCH_ERL_FLAGS (extra flags for erl).
-module(py_bench).

-export([main/0]).

-define(TIMEOUT, 300000).          % per measurement (all variants of a row)
-define(REPLY_TIMEOUT, 30000).     % per echo round trip
-define(ROUNDS, 10).               % latency: blocks per variant, interleaved
-define(TP_ROUNDS, 3).             % throughput: runs per variant, interleaved
-define(MiB, 1048576).
%% erlang_python_port's spin window when neither --spin-us nor the app env sets one (port/runtime.hpp).
-define(PORT_DEFAULT_SPIN_US, 0).

%%====================================================================
%% Entry point
%%====================================================================

main() ->
    try run() of
        ok -> halt(0)
    catch
        Class:Reason:Stack ->
            io:format(standard_error, "bench: crashed: ~p:~p~n~p~n", [Class, Reason, Stack]),
            halt(1)
    end.

run() ->
    Root = case os:getenv("BENCH_ROOT") of
               false -> {ok, Cwd} = file:get_cwd(), Cwd;
               R -> R
           end,
    Priv = case code:priv_dir(erlang_python) of
               {error, _} -> filename:join([Root, "erl", "priv"]);
               P -> P
           end,
    Quick = not lists:member(os:getenv("BENCH_QUICK", ""), ["", "0"]),
    Ctx0 = #{root => Root,
             quick => Quick,
             p => params(Quick),
             callers => env_int("BENCH_CALLERS", 100),
             echo_exe => filename:join(Root, "_build/bench/echo_port"),
             port_exe => filename:join(Priv, "erlang_python_port"),
             pylib => filename:join(Priv, "pylib"),
             priv => Priv,
             loadavg => loadavg()},
    {Rows, Ctx} = lists:foldl(
                    fun({Name, Fun}, {Acc, C}) ->
                            progress("~s", [Name]),
                            T0 = erlang:monotonic_time(millisecond),
                            {Rs, C1} = Fun(C),
                            progress("~s done in ~.1f s",
                                     [Name, (erlang:monotonic_time(millisecond) - T0) / 1000]),
                            {Acc ++ Rs, C1}
                    end, {[], Ctx0}, selected_rows()),
    Text = [header(Ctx), "\n", format_table(Rows), footnotes(Rows)],
    io:put_chars(Text),
    Out = os:getenv("BENCH_OUT", filename:join(Root, "bench/results/latest.txt")),
    ok = filelib:ensure_dir(Out),
    case file:write_file(Out, Text) of
        ok -> progress("table written to ~s", [Out]);
        {error, E} -> progress("could not write ~s: ~p", [Out, E])
    end,
    stop_app(Ctx),
    ok.

%% aio: BENCH_ROWS=name,name (substrings of the row names below) runs only those rows (and the
%% application start they need), e.g. BENCH_ROWS=asyncio for a brief look at one area.
selected_rows() ->
    case string:lexemes(os:getenv("BENCH_ROWS", ""), ",") of
        [] -> rows();
        Wanted -> [R || R = {Name, _} <- rows(), Name =:= "application start"
                        orelse lists:any(fun(W) -> string:find(Name, W) =/= nomatch end, Wanted)]
    end.

%% The rows, in order. Each function takes the context and returns {Rows, Context}.
rows() ->
    [{"application start", fun start_app/1},
     {"start-up (fresh ports)", fun row_startup/1},
     {"latency py:call", fun row_latency_call/1},
     {"latency py:eval", fun row_latency_eval/1},
     {"latency explicit context", fun row_latency_context/1},
     {"latency with memory_limit", fun row_latency_memory_limit/1},  %% opsb
     {"callback round trip", fun row_callback/1},
     {"state_incr", fun row_state_incr/1},
     %% opsa: logging and tracing from Python
     {"Python log record", fun row_log_record/1},
     {"Span while tracing is off", fun row_span_off/1},
     {"RSS after latency runs", fun row_rss_after/1},
     {"throughput", fun row_throughput/1},
     {"stream throughput", fun row_stream/1},
     {"asyncio tasks", fun row_asyncio/1},  % aio (issue 9)
     %% chan: channels and byte channels
     {"channel throughput", fun row_channel/1},
     {"CPU-bound parallel speedup", fun row_cpu_parallel/1},
     %% --- modes
     {"execution modes", fun row_modes/1}]
     %% --- end modes
    ++ bulk_rows().  %% bulk: 1, 16 and 64 MiB round trips (shared memory), below

params(false) ->
    #{lat_n => 20000, lat_warm => 2000, cb_n => 10000, tp_secs => 3.0,
      bulk_iters => #{?MiB => 50, 64 * ?MiB => 5}, startup_iters => 5};
params(true) ->
    #{lat_n => 10000, lat_warm => 1000, cb_n => 5000, tp_secs => 2.0,
      bulk_iters => #{?MiB => 30, 64 * ?MiB => 3}, startup_iters => 3}.

%%====================================================================
%% Rows
%%====================================================================

%% Port start-up: time from open_port to the hello frame (kind 64) for a fresh erlang_python_port
%% (--codec etf --contexts 2), to the first echoed frame for the echo port; VmRSS right after.
row_startup(C = #{p := #{startup_iters := N}}) ->
    Ours = measure(fun() -> repeat_startup(N, fun() -> startup_ours(C) end) end),
    Echo = measure(fun() -> repeat_startup(N, fun() -> startup_echo(C) end) end),
    Hello = case Ours of #{hello := H} -> H; _ -> #{} end,
    Rows = [row(io_lib:format("port start-up, open_port to hello (ms, median of ~b)", [N]), ms,
                val(ms, Ours), val(ms, Echo), "echo: first echoed frame", none),
            row("RSS after start-up (kB)", kb, val(rss, Ours), val(rss, Echo), "echo port", none)],
    {Rows, C#{hello => Hello}}.

%% Sequential py:call(math, sqrt, [16]) from one process, against a same-sized frame's round trip
%% through the echo port from one process (port_command + receive, encode and decode included).
row_latency_call(C = #{p := #{lat_n := N, lat_warm := W}}) ->
    S = echo_spin(C),
    Body = fun() -> {self(), math, sqrt, [16], #{}} end,
    R = measure(fun() ->
                        compare_latency(
                          [{ours, ours_v(C, fun() -> {ok, 4.0} = py:call(math, sqrt, [16]) end)},
                           {echo, echo_v(C, S, 1, Body)},
                           {routed, echo_routed_v(C, S, 1, Body)}]
                          ++ [{blocking, echo_v(C, 0, 1, Body)} || S > 0],
                          W, N)
                end),
    [Ours, Echo, Routed, Blocking] = [pick(K, R) || K <- [ours, echo, routed, blocking]],
    Rows = [row("py:call(math, sqrt, [16]) p50 (us)", us, val(p50, Ours), val(p50, Echo),
                echo_label(S), {ratio_le, 2.0}),
            row("py:call(math, sqrt, [16]) p99 (us)", us, val(p99, Ours), val(p99, Echo),
                echo_label(S), none),
            row("  same p50, vs echo routed via owner+ETS", us, val(p50, Ours), val(p50, Routed),
                echo_label(S) ++ ", routed", none)]
        ++ [row("  same p50, vs blocking echo", us, val(p50, Ours), val(p50, Blocking),
                echo_label(0), none) || S > 0]
        ++ [row("port CPU per call in that run (us)", us, val(cpu, Ours), val(cpu, Echo),
                echo_label(S), none)],
    {Rows, C#{echo_rss_after => val(rss, Echo)}}.

row_latency_eval(C = #{p := #{lat_n := N, lat_warm := W}}) ->
    S = echo_spin(C),
    R = measure(fun() ->
                        compare_latency(
                          [{ours, ours_v(C, fun() -> {ok, 2} = py:eval(<<"1+1">>) end)},
                           {echo, echo_v(C, S, 2, fun() -> {self(), <<"1+1">>, #{}} end)}],
                          W, N)
                end),
    {Ours, Echo} = {pick(ours, R), pick(echo, R)},
    {[row("py:eval(<<\"1+1\">>) p50 (us)", us, val(p50, Ours), val(p50, Echo),
          echo_label(S), {ratio_le, 2.0}),
      row("py:eval(<<\"1+1\">>) p99 (us)", us, val(p99, Ours), val(p99, Echo),
          echo_label(S), none)], C}.

%% py:call on an explicit context (py_context:new/1) beside a plain py:call: the context's place is one
%% ETS read, then the same path (the context process is not in it).
row_latency_context(C = #{p := #{lat_n := N, lat_warm := W}}) ->
    Setup = fun() ->
                    {ok, Ctx} = py_context:new(#{}),
                    put(bench_ctx, Ctx)
            end,
    Call = fun() -> {ok, 4.0} = py:call(get(bench_ctx), math, sqrt, [16]) end,
    R = measure(fun() ->
                        compare_latency(
                          [{ours, ours_v(C, Call, Setup)},
                           {plain, ours_v(C, fun() -> {ok, 4.0} = py:call(math, sqrt, [16]) end)}], W, N)
                end),
    {Ours, Plain} = {pick(ours, R), pick(plain, R)},
    {[row("py:call(Ctx, math, sqrt, [16]) p50 (us)", us, val(p50, Ours), val(p50, Plain),
          "plain py:call(math, sqrt, [16])", {ratio_le, 1.1}),
      row("py:call(Ctx, math, sqrt, [16]) p99 (us)", us, val(p99, Ours), val(p99, Plain),
          "plain py:call(math, sqrt, [16])", none)], C}.

%% opsb: what a context's memory_limit costs (its allocator count) on a plain call, beside a context
%% without one.
row_latency_memory_limit(C = #{p := #{lat_n := N, lat_warm := W}}) ->
    Setup = fun(Opts) -> fun() -> {ok, Ctx} = py_context:new(Opts), put(bench_ctx, Ctx) end end,
    Call = fun() -> {ok, 4.0} = py:call(get(bench_ctx), math, sqrt, [16]) end,
    R = measure(fun() ->
                        compare_latency(
                          [{ours, ours_v(C, Call, Setup(#{memory_limit => 1 bsl 30}))},
                           {plain, ours_v(C, Call, Setup(#{}))}], W, N)
                end),
    {Ours, Plain} = {pick(ours, R), pick(plain, R)},
    {[row("py:call(Ctx, math, sqrt, [16]) with memory_limit p50 (us)", us, val(p50, Ours), val(p50, Plain),
          "same context without a limit", none)], C}.

%% Python -> Erlang -> Python: erlang.call of a registered Erlang function, beside plain py:eval.
row_callback(C = #{p := #{cb_n := N, lat_warm := W}}) ->
    Setup = fun() -> _ = py:register_function(bench_echo, fun([X]) -> X end) end,
    Call = fun() -> {ok, 1} = py:eval(<<"erlang.call('bench_echo', 1)">>) end,
    beside_plain_eval(C, "callback erlang.call('bench_echo', 1)", ours_v(C, Call, Setup), W, N).

row_state_incr(C = #{p := #{cb_n := N, lat_warm := W}}) ->
    Call = fun() ->
                   {ok, I} = py:eval(<<"erlang.state_incr('bench_ctr')">>),
                   true = is_integer(I)
           end,
    beside_plain_eval(C, "erlang.state_incr('bench_ctr')", ours_v(C, Call), W, N).

%% opsa: a Python log record sent to the Erlang logger (py:configure_logging/1; the record crosses the
%% pipe and py_ops_sink takes it), and a Span while tracing is off, each beside plain py:eval.
row_log_record(C = #{p := #{cb_n := N, lat_warm := W}}) ->
    Setup = fun() -> ok = py:configure_logging(#{level => info}) end,
    Call = fun() -> {ok, none} = py:eval(<<"__import__('logging').info('bench')">>) end,
    beside_plain_eval(C, "logging.info('bench') to the Erlang logger", ours_v(C, Call, Setup), W, N).

row_span_off(C = #{p := #{cb_n := N, lat_warm := W}}) ->
    Call = fun() -> {ok, false} = py:eval(<<"erlang.Span('bench').__enter__().__exit__(None, None, None)">>) end,
    beside_plain_eval(C, "erlang.Span('bench') while tracing is off", ours_v(C, Call), W, N).

beside_plain_eval(C, Name, Variant, W, N) ->
    R = measure(fun() ->
                        compare_latency(
                          [{ours, Variant},
                           {plain, ours_v(C, fun() -> {ok, 2} = py:eval(<<"1+1">>) end)}], W, N)
                end),
    {Ours, Plain} = {pick(ours, R), pick(plain, R)},
    {[row(Name ++ " p50 (us)", us, val(p50, Ours), val(p50, Plain), "plain py:eval(1+1)", none),
      row(Name ++ " p99 (us)", us, val(p99, Ours), val(p99, Plain), "plain py:eval(1+1)", none)], C}.

%% CPU-bound Python from as many callers as there are schedulers, against one caller (best of 3 each):
%% the speedup the pool gives on this machine. Ports are separate OS processes, so their GILs do not
%% serialise each other, and consecutive callers are placed on different ports.
row_cpu_parallel(C) ->
    N = erlang:system_info(schedulers),
    Code = <<"sum(i * i for i in range(2000000))">>,
    R = measure(fun() ->
                        {ok, _} = py:eval(Code),
                        One = best_of(3, fun() -> {ok, _} = py:eval(Code) end),
                        Self = self(),
                        Par = best_of(3, fun() ->
                                  Ps = [spawn_link(fun() -> Self ! {cpu_done, self(), py:eval(Code)} end)
                                        || _ <- lists:seq(1, N)],
                                  [receive {cpu_done, P, {ok, _}} -> ok end || P <- Ps]
                              end),
                        N * One / Par
                end),
    {[row(io_lib:format("CPU-bound speedup, ~b callers vs 1 (x)", [N]), ratio, R, blank, "",
          {ge, 0.9 * N})], C}.

%% --- modes: the mode table (issue 8). For each mode this node can run: two CPU-bound callers on two
%% contexts against one caller doing both pieces (x), the memory one more unit of parallelism costs
%% (kB of RSS, ctx_memory/2), and py:call(Ctx, math, sqrt, [16]) p50 (us).
%%   several ports: the default pool's Python, two contexts on two different ports
%%   worker on 3.13t: a pool on the python3.13t port (erl/priv/ports/, tools/pythons.sh build), GIL off
%%   owngil: a pool of owngil contexts on the python3.13 port (a sub-interpreter each, one port)
row_modes(C) ->
    Ports = case maps:get(app_ok, C) of
                true -> measure(fun() -> mode_row(default) end);
                false -> app_na(C)
            end,
    FT = case maps:get(app_ok, C) andalso py_pool_ports:executable('python3.13t') of
             {ok, _} -> measure(fun() -> mode_row(free_threaded) end);
             false -> app_na(C);
             {error, _} -> {na, "python3.13t port not built (tools/pythons.sh build)"}
         end,
    Own = case maps:get(app_ok, C) andalso py_pool_ports:executable('python3.13') of
              {ok, _} -> measure(fun() -> mode_row(owngil) end);
              false -> app_na(C);
              {error, _} -> {na, "python3.13 port not built (tools/pythons.sh build)"}
          end,
    Rows = [row(io_lib:format("mode ~s: 2 CPU-bound callers vs 1 (x)", [Name]), ratio, val(speedup, V), blank, "",
                {ge, 1.8}) || {Name, V} <- [{"several ports", Ports}, {"worker 3.13t", FT}, {"owngil", Own}]]
        ++ [row(io_lib:format("mode ~s: memory per parallel context (kB)", [Name]), kb, val(ctx_kb, V), blank, "", none)
            || {Name, V} <- [{"several ports", Ports}, {"worker 3.13t", FT}, {"owngil", Own}]]
        ++ [row(io_lib:format("mode ~s: py:call(Ctx, math, sqrt, [16]) p50 (us)", [Name]), us, val(p50, V),
                blank, "", none)
            || {Name, V} <- [{"several ports", Ports}, {"worker 3.13t", FT}, {"owngil", Own}]],
    {Rows, C}.

%% #{speedup, ctx_kb, p50} for one mode.
mode_row(Mode) ->
    {C1, C2, Slot, Cleanup} = mode_contexts(Mode),
    try
        Spin = <<"def spin(n):\n    t = 0\n    for i in range(n):\n        t += i * i\n    return t\n"
                 "import builtins\nbuiltins.ep_bench_spin = spin\n">>,
        ok = py:exec(C1, Spin),
        ok = py:exec(C2, Spin),
        W = 2000000,
        One = best_of(3, fun() -> {ok, _} = py:call(C1, builtins, ep_bench_spin, [W]),
                                  {ok, _} = py:call(C1, builtins, ep_bench_spin, [W]) end),
        Self = self(),
        Two = best_of(3, fun() ->
                  Ps = [spawn_link(fun() -> Self ! {mode_done, self(), py:call(X, builtins, ep_bench_spin, [W])} end)
                        || X <- [C1, C2]],
                  [receive {mode_done, P, {ok, _}} -> ok after ?TIMEOUT -> error(timeout) end || P <- Ps]
              end),
        CtxKb = ctx_memory(Mode, Slot),
        Call = fun() -> {ok, 4.0} = py:call(C1, math, sqrt, [16]) end,
        _ = [Call() || _ <- lists:seq(1, 1000)],
        T = list_to_tuple(lists:sort([element(1, timer:tc(Call)) || _ <- lists:seq(1, 5000)])),
        P50 = element(tuple_size(T) div 2 + 1, T),
        #{speedup => One / Two, ctx_kb => CtxKb, p50 => P50}
    after
        Cleanup()
    end.

mode_contexts(default) ->
    %% Contexts 1 and 2 of the default pool are on ports 1 and 2 when there are two ports or more.
    C1 = py:context(1),
    C2 = py:context(2),
    {ok, #{slot := Slot}} = py_context:place(C1),
    {C1, C2, Slot, fun() -> ok end};
mode_contexts(free_threaded) ->
    {ok, [C1, C2]} = py_context_router:start_pool(bench_ft, 2, #{python => 'python3.13t'}),
    {ok, Slot} = py_pool_ports:slot_of(bench_ft),
    {C1, C2, Slot, fun() -> py_context_router:stop_pool(bench_ft) end};
mode_contexts(owngil) ->
    {ok, [C1, C2]} = py_context_router:start_pool(bench_og, 2, #{python => 'python3.13', mode => owngil, ports => 1}),
    {ok, Slot} = py_pool_ports:slot_of(bench_og),
    {C1, C2, Slot, fun() -> py_context_router:stop_pool(bench_og) end}.

%% What one more unit of parallelism costs in memory. Several ports: one port OS process (its RSS).
%% Worker on 3.13t: one more context in the pool's port (RSS with 6 contexts minus with 2, over 4).
ctx_memory(default, Slot) ->
    rss(maps:get(os_pid, py_port:info(Slot)));
ctx_memory(free_threaded, _Slot) ->
    Rss = fun(Size) ->
              {ok, Cs} = py_context_router:start_pool(bench_ft_mem, Size, #{python => 'python3.13t'}),
              _ = [{ok, 1} = py:eval(X, <<"1">>) || X <- Cs],
              {ok, S} = py_pool_ports:slot_of(bench_ft_mem),
              R = rss(maps:get(os_pid, py_port:info(S))),
              ok = py_context_router:stop_pool(bench_ft_mem),
              R
          end,
    (Rss(6) - Rss(2)) / 4;
%% owngil: one more sub-interpreter in the pool's port (RSS with 6 contexts minus with 2, over 4).
ctx_memory(owngil, _Slot) ->
    Rss = fun(Size) ->
              {ok, Cs} = py_context_router:start_pool(bench_og_mem, Size, #{python => 'python3.13', mode => owngil, ports => 1}),
              _ = [{ok, 1} = py:eval(X, <<"1">>) || X <- Cs],
              {ok, S} = py_pool_ports:slot_of(bench_og_mem),
              R = rss(maps:get(os_pid, py_port:info(S))),
              ok = py_context_router:stop_pool(bench_og_mem),
              R
          end,
    (Rss(6) - Rss(2)) / 4.
%% --- end modes

best_of(K, Fun) ->
    lists:min([element(1, timer:tc(Fun)) || _ <- lists:seq(1, K)]).

row_rss_after(C) ->
    Ours = case maps:get(app_ok, C) of
               true -> measure(fun() -> lists:max([rss(P) || P <- our_os_pids()]) end);
               false -> app_na(C)
           end,
    {[row(io_lib:format("RSS after latency runs (kB, max of ~b ports)", [nports(C)]), kb, Ours,
          maps:get(echo_rss_after, C, {na, "no echo run"}), "echo port", none)], C}.

%% Callers concurrent processes, each calling in a loop until the deadline.
row_throughput(C = #{p := #{tp_secs := Secs}, callers := Callers}) ->
    S = echo_spin(C),
    K = nports(C),
    Call = fun(_Seq) -> {ok, 4.0} = py:call(math, sqrt, [16]) end,
    R = measure(fun() ->
                        compare_throughput(
                          [{ours, ours_tp_v(C, fun(_Idx) -> Call end)},
                           {echo1, echo_tp_v(C, S, 1)},
                           {echok, echo_tp_v(C, S, K)}], Callers, Secs)
                end),
    [Ours, Echo1, EchoK] = [pick(V, R) || V <- [ours, echo1, echok]],
    Name = io_lib:format("throughput, ~b callers (calls/s)", [Callers]),
    {[row(Name, cps, Ours, Echo1, echo_label(S) ++ ", 1 port", {ge, 250000}),
      row("  same, vs a pool of echo ports", cps, Ours, EchoK,
          echo_label(S) ++ io_lib:format(", ~b port(s)", [K]), {ge, 250000})], C}.

%% Streams (py_stream): items/s of py:stream_eval collecting iter(range(N)), and of py:stream_start
%% delivering to a consumer that takes every event, both from one caller, beside plain py:call calls/s
%% from one caller (the baseline: what one process gets without streaming). Each runs Secs / 2.
row_stream(C = #{p := #{tp_secs := Secs}}) ->
    Ms = round(Secs * 500),
    Calls = fun() -> {ok, 4.0} = py:call(math, sqrt, [16]), 1 end,
    Batch = fun() -> {ok, L} = py:stream_eval(<<"iter(range(100000))">>), length(L) end,
    Events = fun() -> {ok, Ref} = py:stream_start(builtins, range, [100000]), stream_events(Ref, 0) end,
    Rate = fun(F) -> measure(fun() -> case C of
                                          #{app_ok := true} -> per_second(F, Ms);
                                          _ -> app_na(C)
                                      end end) end,
    [Base, BatchR, EventsR] = [Rate(F) || F <- [Calls, Batch, Events]],
    {[row("stream items/s, py:stream_eval of range, 1 caller", ips, BatchR, Base,
          "py:call calls/s, 1 caller", none),
      row("stream items/s, py:stream_start to its consumer, 1 caller", ips, EventsR, Base,
          "py:call calls/s, 1 caller", none)], C}.

%% ---- aio (issue 9): asyncio tasks. BEGIN ----
%% py_event_loop:run of a sync function and create_task + await of a coroutine (asyncio.sleep(0, 1)),
%% per round trip from one caller, beside plain py:call from one caller; 20 concurrent submitters
%% (tasks/s) beside 20 plain py:call callers (calls/s); 10,000 concurrent asyncio.sleep(0.01) tasks in
%% the port's loop (erlang.run of a gather), wall time. Targets (issue 9): round trip within 2x py:call;
%% 20 submitters at least the 20 callers' calls/s; the 10,000 sleeps under 200 ms.
row_asyncio(C = #{p := #{tp_secs := Secs}}) ->
    Ms = round(Secs * 500),
    Us = fun(F) -> measure(fun() -> case C of
                                        #{app_ok := true} -> 1.0e6 / per_second(F, Ms);
                                        _ -> app_na(C)
                                    end end) end,
    Call = fun() -> {ok, 4.0} = py:call(math, sqrt, [16]), 1 end,
    RunSync = fun() -> {ok, 4.0} = py_event_loop:run(math, sqrt, [16]), 1 end,
    Task = fun() -> {ok, 1} = py_event_loop:await(py_event_loop:create_task(asyncio, sleep, [0, 1]), 5000), 1 end,
    [CallUs, RunUs, TaskUs] = [Us(F) || F <- [Call, RunSync, Task]],
    Par = fun(F) -> measure(fun() -> case C of
                                         #{app_ok := true} -> concurrent_rate(20, F, Ms);
                                         _ -> app_na(C)
                                     end end) end,
    [Calls20, Tasks20] = [Par(F) || F <- [Call, Task]],
    Sleeps = measure(fun() -> case C of
        #{app_ok := true} ->
            ok = py:exec(<<"import asyncio, erlang, time\n"
                "async def _aio_bench_sleeps(n):\n"
                "    t0 = time.perf_counter()\n"
                "    await asyncio.gather(*(asyncio.sleep(0.01) for _ in range(n)))\n"
                "    return (time.perf_counter() - t0) * 1000\n">>),
            {ok, WallMs} = py:eval(<<"erlang.run(_aio_bench_sleeps(10000))">>),
            WallMs;
        _ -> app_na(C)
    end end),
    {[row("py_event_loop:run(math, sqrt, [16]), 1 caller (us)", us, RunUs, CallUs,
          "py:call, 1 caller", none),
      row("create_task + await of a coroutine, 1 caller (us; target <= 2x)", us, TaskUs, CallUs,
          "py:call, 1 caller", none),
      row("tasks/s, 20 concurrent submitters (target >= 1x)", cps, Tasks20, Calls20,
          "py:call calls/s, 20 callers", none),
      row("10,000 concurrent asyncio.sleep(0.01), wall (ms; target < 200)", ms, Sleeps, blank, "", none)], C}.

%% Calls per second of K processes each running F() until Ms have passed (F returns its count).
concurrent_rate(K, F, Ms) ->
    Parent = self(),
    T0 = erlang:monotonic_time(millisecond),
    Pids = [spawn_link(fun() -> Parent ! {self(), aio_count(F, T0 + Ms, 0)} end) || _ <- lists:seq(1, K)],
    Total = lists:sum([receive {P, N} -> N after ?TIMEOUT -> error(aio_caller_stalled) end || P <- Pids]),
    Total * 1000 / max(1, erlang:monotonic_time(millisecond) - T0).

aio_count(F, Until, N) ->
    case erlang:monotonic_time(millisecond) >= Until of
        true -> N;
        false -> aio_count(F, Until, N + F())
    end.
%% ---- aio (issue 9): asyncio tasks. END ----
%% ---- chan: channels and byte channels (py_channel, py_byte_channel) --------------------------------
%% One Erlang producer, one Python consumer on the same port (a process bound to another context of
%% the channel's slot): channel messages/s of 64-byte binaries, byte-channel MB/s of 64 KiB chunks,
%% both with max_size 4 MiB (a busy send retries at once). Timed from the first send to the consumer's
%% answer (it has read everything). No baseline: the echo port has no channels. BENCH_CHAN_MSGS and
%% BENCH_CHAN_MB override the amounts (a smoke check with tiny counts).
row_channel(C = #{quick := Quick}) ->
    Msgs = env_int("BENCH_CHAN_MSGS", case Quick of true -> 50000; false -> 200000 end),
    MB = env_int("BENCH_CHAN_MB", case Quick of true -> 64; false -> 256 end),
    Rate = fun(F) -> measure(fun() -> case C of
                                          #{app_ok := true} -> F();
                                          _ -> app_na(C)
                                      end end) end,
    MsgRate = Rate(fun() -> chan_run(py_channel, binary:copy(<<"m">>, 64), Msgs,
                                     <<"sum(1 for _ in __import__('erlang.channel').channel.Channel(ch))">>) / 1 end),
    Chunk = binary:copy(<<"b">>, 65536),
    Chunks = max(1, MB * 16),
    ByteRate = Rate(fun() ->
                            T = Chunks / chan_run(py_byte_channel, Chunk, Chunks,
                                                  <<"sum(1 for _ in __import__('erlang').ByteChannel(ch))">>),
                            Chunks * 65536 / 1.0e6 / T
                    end),
    {[row(io_lib:format("channel messages/s, 64 B, ~b messages, 1 producer, 1 consumer", [Msgs]), ips,
          MsgRate, blank, "", none),
      row(io_lib:format("byte channel MB/s, 64 KiB chunks, ~b MiB", [MB]), mbs, ByteRate, blank, "", none)], C}.

%% Sends N copies of Item on a new channel of Mod read by Code (an expression counting what it read)
%% and returns items/s.
chan_run(Mod, Item, N, Code) ->
    {ok, Ch} = Mod:new(#{max_size => 4 * ?MiB, slot => 1}),
    Self = self(),
    {Pid, MRef} = spawn_monitor(fun() ->
                                        ok = py_router:bind({1, 1}),
                                        Self ! {chan_count, self(), py:eval(Code, #{ch => Ch})}
                                end),
    T0 = erlang:monotonic_time(microsecond),
    ok = chan_send(Mod, Ch, Item, N),
    ok = Mod:close(Ch),
    Count = receive
                {chan_count, Pid, {ok, K}} -> K;
                {chan_count, Pid, Other} -> error({chan_consumer, Other});
                {'DOWN', MRef, process, Pid, Why} -> error({chan_consumer_died, Why})
            after ?TIMEOUT -> error(chan_consumer_stalled)
            end,
    T = erlang:monotonic_time(microsecond) - T0,
    erlang:demonitor(MRef, [flush]),
    N = Count,
    N * 1.0e6 / max(1, T).

chan_send(_, _, _, 0) -> ok;
chan_send(Mod, Ch, Item, N) ->
    case Mod:send(Ch, Item) of
        ok -> chan_send(Mod, Ch, Item, N - 1);
        busy -> erlang:yield(), chan_send(Mod, Ch, Item, N)
    end.
%% ---- end chan --------------------------------------------------------------------------------------

%% Units of work per second: F() returns how many it did; run until Ms have passed.
per_second(F, Ms) ->
    T0 = erlang:monotonic_time(millisecond),
    per_second(F, T0, T0 + Ms, 0).

per_second(F, T0, Until, N) ->
    case erlang:monotonic_time(millisecond) of
        T when T >= Until -> N * 1000 / max(1, T - T0);
        _ -> per_second(F, T0, Until, N + F())
    end.

stream_events(Ref, N) ->
    receive
        {py_stream, Ref, {data, _}} -> stream_events(Ref, N + 1);
        {py_stream, Ref, done} -> N;
        {py_stream, Ref, {error, E}} -> error({stream_error, E})
    after 30000 ->
            error(stream_stalled)
    end.

%% One binary there and back: ours py:eval(<<"b">>, #{b => {bytes, Bin}}) (Python bytes -> binary),
%% echo the same request frame. MB/s = payload bytes / round-trip time, 1 MB = 10^6 bytes.
row_bulk(C = #{p := #{bulk_iters := Iters}}, Size) ->
    S = echo_spin(C),
    N = maps:get(Size, Iters),
    Bin = binary:copy(<<"0123456789abcdef">>, Size div 16),
    OursCall = fun() ->
                       {ok, R} = py:eval(<<"b">>, #{b => {bytes, Bin}}),
                       Size = byte_size(R)
               end,
    EchoBody = fun() -> {self(), <<"b">>, #{b => {bytes, Bin}}} end,
    EchoCheck = fun({_, _, #{b := {bytes, R}}}) -> Size = byte_size(R) end,
    R = measure(fun() ->
                        compare_bulk([{ours, ours_v(C, OursCall)},
                                      {echo, echo_v(C, S, 2, EchoBody, EchoCheck)}], Size, N)
                end),
    Target = case Size >= 64 * ?MiB of
                 true -> {ge, 1000};
                 false -> none
             end,
    {[row(io_lib:format("bulk ~b MiB round trip (MB/s, median of ~b)", [Size div ?MiB, N]), mbs,
          pick(ours, R), pick(echo, R), echo_label(S), Target)], C}.

%% --- bulk (PROTOCOL.md §3.12, shared memory): begin ---------------------------------------------
%% The same round trip as row_bulk/2 at 1, 16 and 64 MiB, ours (the application's defaults: bodies of
%% 512 KiB or more through shared memory) beside the echo port in the same run, interleaved, the median
%% of N rounds; then ours/echo, whose target at 64 MiB is 4x (issue 10). The machine's load moves both
%% sides, so read the ratio, not the MB/s.
bulk_rows() ->
    [{lists:flatten(io_lib:format("bulk ~b MiB", [M])), fun(C) -> row_bulk_shm(C, M * ?MiB) end} || M <- [1, 16, 64]]
    ++ [{"bulk callback reply 64 MiB", fun(C) -> row_bulk_callback(C, 64 * ?MiB) end}].

%% An Erlang function returning a 64 MiB binary to erlang.call (bytes in Python; through a request
%% region, PROTOCOL.md §3.12). MB/s = payload bytes / time of the whole py:eval, median of N. No
%% baseline: the echo port has no callbacks (the bulk rows above compare the transport itself).
row_bulk_callback(C, Size) ->
    N = case maps:get(quick, C, false) of true -> 3; false -> 5 end,
    Bin = binary:copy(<<"0123456789abcdef">>, Size div 16),
    Setup = fun() -> ok = py:register_function(bench_big_reply, fun([]) -> {bytes, Bin} end) end,
    Call = fun() -> {ok, Size} = py:eval(<<"len(erlang.call('bench_big_reply'))">>) end,
    R = measure(fun() -> compare_bulk([{ours, ours_v(C, Call, Setup)}], Size, N) end),
    {[row(io_lib:format("callback reply ~b MiB into Python (MB/s, median of ~b)", [Size div ?MiB, N]), mbs,
          pick(ours, R), blank, "", none)], C}.

row_bulk_shm(C, Size) ->
    N = case {maps:get(quick, C, false), Size} of
            {_, S1} when S1 =< ?MiB -> 30;
            {true, _} -> 3;
            {false, S2} when S2 =< 16 * ?MiB -> 9;
            {false, _} -> 5
        end,
    {Rows, C1} = row_bulk(C#{p := (maps:get(p, C))#{bulk_iters => #{Size => N}}}, Size),
    [Row = #{ours := Ours, base := Echo}] = Rows,
    Ratio = case is_number(Ours) andalso is_number(Echo) andalso Echo > 0 of
                true -> Ours / Echo;
                false -> {na, "no ratio"}
            end,
    Target = case Size >= 64 * ?MiB of
                 true -> {ge, 4.0};
                 false -> none
             end,
    {[Row#{target := none}, row("  same, ours / echo port", ratio, Ratio, blank, "same run", Target)], C1}.
%% --- bulk: end ------------------------------------------------------------------------------------

%%====================================================================
%% Our side
%%====================================================================

start_app(C) ->
    case code:ensure_loaded(py) of
        {module, py} -> start_app_loaded(C);
        _ -> {[], C#{app_ok => false, app_error => "module py not found (app not built?)"}}
    end.

start_app_loaded(C) ->
    _ = application:load(erlang_python),
    lists:foreach(fun({Var, Key, Conv}) ->
                          case os:getenv(Var) of
                              false -> ok;
                              V -> application:set_env(erlang_python, Key, Conv(V))
                          end
                  end,
                  [{"BENCH_NUM_PORTS", num_ports, fun list_to_integer/1},
                   {"BENCH_CONTEXTS", contexts_per_port, fun list_to_integer/1},
                   {"BENCH_CODEC", codec, fun list_to_atom/1},
                   {"BENCH_SPIN_US", spin_us, fun list_to_integer/1}]),
    T0 = erlang:monotonic_time(),
    Started = application:ensure_all_started(erlang_python),
    T1 = erlang:monotonic_time(),
    Row = fun(Ours) ->
                  [row("application start, ensure_all_started (ms)", ms, Ours, blank, "", none)]
          end,
    case Started of
        {ok, _} ->
            case wait_ready(erlang:monotonic_time(millisecond) + 30000) of
                ok ->
                    Pids = case measure(fun our_os_pids/0) of
                               L when is_list(L) -> L;
                               _ -> []
                           end,
                    {Row(ns(T1 - T0) / 1.0e6), C#{app_ok => true, nports => length(Pids)}};
                {error, Why} ->
                    {Row({na, Why}), C#{app_ok => false, app_error => Why}}
            end;
        {error, Why} ->
            {Row({na, Why}), C#{app_ok => false, app_error => Why}}
    end.

wait_ready(Deadline) ->
    case catch py:eval(<<"1+1">>) of
        {ok, 2} -> ok;
        Other ->
            case erlang:monotonic_time(millisecond) > Deadline of
                true -> {error, {not_ready, Other}};
                false -> timer:sleep(100), wait_ready(Deadline)
            end
    end.

stop_app(#{app_ok := true}) -> _ = application:stop(erlang_python), ok;
stop_app(_) -> ok.

app_na(C) -> {na, maps:get(app_error, C, "application not started")}.

%% A variant making one call of ours per round trip; Setup runs once, in the measuring process.
ours_v(C, Call) -> ours_v(C, Call, fun() -> ok end).

ours_v(#{app_ok := true}, Call, Setup) ->
    fun() ->
            _ = Setup(),
            Pids = our_os_pids(),
            #{call => Call, cpu => fun() -> lists:sum([cpu_ticks(P) || P <- Pids]) end}
    end;
ours_v(C, _Call, _Setup) ->
    fun() -> app_na(C) end.

ours_tp_v(#{app_ok := true}, MkCaller) -> fun() -> #{caller => MkCaller} end;
ours_tp_v(C, _MkCaller) -> fun() -> app_na(C) end.

our_os_pids() ->
    Stats = case py:stats() of
                {ok, L} -> L;
                L -> L
            end,
    [maps:get(os_pid, M) || M <- Stats].

%% How many port processes the application runs (its default: one per scheduler, erlang_python_sup).
nports(C) ->
    case maps:get(nports, C, 0) of
        0 -> app_env(num_ports, erlang:system_info(schedulers));
        N -> N
    end.

%% The echo port spins as long as ours does, so the ratio compares like with like.
echo_spin(_C) ->
    case os:getenv("BENCH_ECHO_SPIN_US") of
        false ->
            case app_env(spin_us, 0) of
                N when is_integer(N), N > 0 -> N;   % 0 means "the port's default" (erlang_python_sup)
                _ -> ?PORT_DEFAULT_SPIN_US
            end;
        V -> list_to_integer(V)
    end.

app_env(Key, Default) ->
    application:get_env(erlang_python, Key, Default).

startup_ours(#{port_exe := Exe, pylib := Pylib}) ->
    T0 = erlang:monotonic_time(),
    Port = open_port({spawn_executable, Exe},
                     [{packet, 4}, binary, exit_status, use_stdio,
                      {args, ["--codec", "etf", "--contexts", "2", "--pylib", Pylib]}]),
    Hello = wait_hello(Port),
    T1 = erlang:monotonic_time(),
    {os_pid, OsPid} = erlang:port_info(Port, os_pid),
    Rss = rss(OsPid),
    port_close(Port),
    #{ms => ns(T1 - T0) / 1.0e6, rss => Rss, hello => Hello}.

wait_hello(Port) ->
    receive
        {Port, {data, <<64, _:15/binary, Body/binary>>}} -> binary_to_term(Body);
        {Port, {data, _Other}} -> wait_hello(Port);
        {Port, {exit_status, St}} -> error({port_exited, St})
    after ?REPLY_TIMEOUT -> error(no_hello)
    end.

%%====================================================================
%% The echo baseline
%%====================================================================

open_echo(#{echo_exe := Exe}, Spin) ->
    open_port({spawn_executable, Exe},
              [{packet, 4}, binary, exit_status, use_stdio,
               {args, ["--spin-us", integer_to_list(Spin)]}]).

echo_label(0) -> "echo port, blocking";
echo_label(S) -> io_lib:format("echo port, spin ~b us", [S]).

%% A variant: the measuring process owns an echo port and makes a request as the real caller does,
%% header + term_to_binary(BodyFun()) out, the reply's body decoded and given to Check.
echo_v(C, Spin, Kind, BodyFun) -> echo_v(C, Spin, Kind, BodyFun, fun(_) -> ok end).

echo_v(C, Spin, Kind, BodyFun, Check) ->
    fun() ->
            Port = open_echo(C, Spin),
            {os_pid, OsPid} = erlang:port_info(Port, os_pid),
            Counter = counters:new(1, []),
            Call = fun() ->
                           counters:add(Counter, 1, 1),
                           Check(echo_round_trip(Port, Kind, counters:get(Counter, 1), BodyFun()))
                   end,
            #{call => Call,
              cpu => fun() -> cpu_ticks(OsPid) end,
              finish => fun() -> #{rss => rss(OsPid)} end}
    end.

echo_round_trip(Port, Kind, Id, Body) ->
    port_command(Port, [<<Kind, 0, 0:16, 1:32, Id:64>>, term_to_binary(Body)]),
    receive
        {Port, {data, <<_:8/binary, Id:64, Reply/binary>>}} -> binary_to_term(Reply);
        {Port, {exit_status, St}} -> error({echo_exited, St})
    after ?REPLY_TIMEOUT -> error(echo_timeout)
    end.

%% Same, but the reply comes back through an owner process that routes it by id, as in the app.
echo_routed_v(C, Spin, Kind, BodyFun) ->
    fun() ->
            Owner = start_echo_owner(C, Spin),
            Counter = counters:new(1, []),
            #{call => fun() ->
                              counters:add(Counter, 1, 1),
                              echo_routed_call(Owner, Kind, counters:get(Counter, 1), BodyFun())
                      end}
    end.

%% K owners, each with its port; caller Idx uses owner Idx rem K.
echo_tp_v(C, Spin, K) ->
    fun() ->
            Owners = list_to_tuple([start_echo_owner(C, Spin) || _ <- lists:seq(1, K)]),
            #{caller =>
                  fun(Idx) ->
                          Owner = element(Idx rem K + 1, Owners),
                          fun(Seq) ->
                                  {_, math, sqrt, [16], _} =
                                      echo_routed_call(Owner, 1, (Idx bsl 32) bor Seq,
                                                       {self(), math, sqrt, [16], #{}})
                          end
                  end}
    end.

%% The owner holds the port and an ETS table Id -> caller pid. A caller registers its id, writes
%% the frame itself, and waits; the owner reads only the header and forwards the body. The owner is
%% linked to the measuring process and goes with it.
start_echo_owner(C, Spin) ->
    Parent = self(),
    Ref = make_ref(),
    Pid = spawn_link(fun() ->
                             Port = open_echo(C, Spin),
                             Tab = ets:new(echo_route, [public, set, {write_concurrency, true},
                                                        {read_concurrency, true}]),
                             Parent ! {Ref, Port, Tab},
                             echo_owner_loop(Port, Tab)
                     end),
    receive
        {Ref, Port, Tab} -> #{pid => Pid, port => Port, tab => Tab}
    after ?REPLY_TIMEOUT -> error(echo_owner_start)
    end.

echo_owner_loop(Port, Tab) ->
    receive
        {Port, {data, <<_:8/binary, Id:64, Body/binary>>}} ->
            case ets:take(Tab, Id) of
                [{_, Caller}] -> Caller ! {echo_reply, Id, Body};
                [] -> ok
            end,
            echo_owner_loop(Port, Tab);
        {Port, {exit_status, St}} ->
            exit({echo_exited, St})
    end.

echo_routed_call(#{port := Port, tab := Tab}, Kind, Id, Body) ->
    true = ets:insert(Tab, {Id, self()}),
    port_command(Port, [<<Kind, 0, 0:16, 1:32, Id:64>>, term_to_binary(Body)]),
    receive
        {echo_reply, Id, Reply} -> binary_to_term(Reply)
    after ?REPLY_TIMEOUT -> error(echo_timeout)
    end.

startup_echo(C) ->
    T0 = erlang:monotonic_time(),
    Port = open_echo(C, 0),
    _ = echo_round_trip(Port, 2, 1, []),
    T1 = erlang:monotonic_time(),
    {os_pid, OsPid} = erlang:port_info(Port, os_pid),
    Rss = rss(OsPid),
    port_close(Port),
    #{ms => ns(T1 - T0) / 1.0e6, rss => Rss}.

%%====================================================================
%% Comparing variants
%%====================================================================
%%
%% A variant is {Name, Init}. Init() runs in the measuring process and returns {na, Why} or a map:
%%   call   => fun() -> _   one round trip (crashes on a wrong answer)    latency, bulk
%%   caller => fun(Idx) -> fun(Seq) -> _   a caller's round trip           throughput
%%   cpu    => fun() -> Ticks   CPU used so far by the process(es) serving it   (optional)
%%   finish => fun() -> map()   extra results, after the last round             (optional)
%% The compare_* functions return #{Name => Result | {na, Why}}; a variant that fails drops out
%% without stopping the others.

compare_latency(Variants, Warm, N) ->
    Per = max(1, N div ?ROUNDS),
    S0 = init_variants(Variants),
    S1 = each(S0, fun(V = #{call := Call}) ->
                          _ = [Call() || _ <- lists:seq(1, Warm)],
                          V#{samples => [], ticks => 0}
                  end),
    S2 = lists:foldl(fun(_, Ss) -> each(Ss, fun(V) -> latency_block(V, Per) end) end,
                     S1, lists:seq(1, ?ROUNDS)),
    maps:from_list(each(S2, fun latency_result/1)).

latency_block(V = #{call := Call, samples := Samples, ticks := Ticks}, K) ->
    C0 = cpu(V),
    Samples1 = time_each(Call, K, Samples),
    V#{samples := Samples1, ticks := Ticks + cpu(V) - C0}.

latency_result(V = #{samples := Samples, ticks := Ticks}) ->
    T = list_to_tuple(lists:sort(Samples)),
    N = tuple_size(T),
    maps:merge(finish(V), #{p50 => pct(T, 0.50), p99 => pct(T, 0.99), cpu => ticks_to_us(Ticks) / N}).

%% Calls per second: total calls over total time of ?TP_ROUNDS interleaved runs of Secs/?TP_ROUNDS.
compare_throughput(Variants, Callers, Secs) ->
    Round = Secs / ?TP_ROUNDS,
    S0 = init_variants(Variants),
    S1 = each(S0, fun(V = #{caller := Mk}) ->
                          _ = throughput_run(Callers, Round / 5, Mk),   % warm-up
                          V#{calls => 0, ns => 0}
                  end),
    S2 = lists:foldl(fun(_, Ss) ->
                             each(Ss, fun(V = #{caller := Mk, calls := Calls, ns := Ns}) ->
                                              {Calls1, Ns1} = throughput_run(Callers, Round, Mk),
                                              V#{calls := Calls + Calls1, ns := Ns + Ns1}
                                      end)
                     end, S1, lists:seq(1, ?TP_ROUNDS)),
    maps:from_list(each(S2, fun(#{calls := Calls, ns := Ns}) -> Calls / (Ns / 1.0e9) end)).

%% MB/s of Size payload bytes per round trip, from the median of N interleaved round trips.
compare_bulk(Variants, Size, N) ->
    S0 = init_variants(Variants),
    S1 = each(S0, fun(V = #{call := Call}) -> _ = Call(), V#{times => []} end),   % warm-up
    S2 = lists:foldl(fun(_, Ss) ->
                             each(Ss, fun(V = #{call := Call, times := Ts}) ->
                                              V#{times := time_each(Call, 1, Ts)}
                                      end)
                     end, S1, lists:seq(1, N)),
    maps:from_list(each(S2, fun(#{times := Ts}) ->
                                    Median = lists:nth((N + 1) div 2, lists:sort(Ts)),
                                    Size / (ns(Median) / 1.0e9) / 1.0e6
                            end)).

init_variants(Variants) ->
    [{Name, guarded(fun() -> Init() end)} || {Name, Init} <- Variants].

%% Applies F to each live variant's state; a crash turns that variant into {na, Why}.
each(States, F) ->
    [{Name, case S of
                {na, _} -> S;
                _ -> guarded(fun() -> F(S) end)
            end} || {Name, S} <- States].

guarded(F) ->
    try F()
    catch Class:Reason:Stack -> {na, {Class, Reason, lists:sublist(Stack, 2)}}
    end.

cpu(#{cpu := F}) -> F();
cpu(_) -> 0.

finish(#{finish := F}) -> F();
finish(_) -> #{}.

pick(_Name, {na, _} = Na) -> Na;
pick(Name, R) when is_map(R) -> maps:get(Name, R, {na, "not run"}).

%%====================================================================
%% Measuring
%%====================================================================

%% Runs Fun in a fresh process (ports and helpers it opens die with it). A crash or a hang gives
%% {na, Why}, which prints as "n/a" with a footnote.
measure(Fun) ->
    {Pid, Mref} = spawn_monitor(fun() -> exit({bench_result, guarded(Fun)}) end),
    receive
        {'DOWN', Mref, process, Pid, {bench_result, R}} -> R;
        {'DOWN', Mref, process, Pid, Why} -> {na, Why}
    after ?TIMEOUT ->
            exit(Pid, kill),
            {na, timeout}
    end.

time_each(_Fun, 0, Acc) -> Acc;
time_each(Fun, N, Acc) ->
    T0 = erlang:monotonic_time(),
    _ = Fun(),
    T1 = erlang:monotonic_time(),
    time_each(Fun, N - 1, [T1 - T0 | Acc]).

pct(T, P) ->
    N = tuple_size(T),
    ns(element(max(1, min(N, ceil(P * N))), T)) / 1000.

%% Callers processes call in a loop from a common start until the deadline: {Calls, Nanoseconds}.
throughput_run(Callers, Secs, MkCaller) ->
    Parent = self(),
    Ref = make_ref(),
    Pids = [spawn_link(fun() ->
                               F = MkCaller(I),
                               receive
                                   {go, Ref, Deadline} ->
                                       Parent ! {Ref, guarded(fun() -> call_until(F, Deadline, 0) end)}
                               end
                       end) || I <- lists:seq(1, Callers)],
    T0 = erlang:monotonic_time(),
    Deadline = T0 + erlang:convert_time_unit(round(Secs * 1.0e6), microsecond, native),
    _ = [P ! {go, Ref, Deadline} || P <- Pids],
    Counts = [receive {Ref, Count} -> Count end || _ <- Pids],
    T1 = erlang:monotonic_time(),
    case [Na || {na, _} = Na <- Counts] of
        [] -> {lists:sum(Counts), ns(T1 - T0)};
        [{na, Why} | _] -> error(Why)
    end.

call_until(F, Deadline, Count) ->
    case erlang:monotonic_time() < Deadline of
        true -> _ = F(Count), call_until(F, Deadline, Count + 1);
        false -> Count
    end.

repeat_startup(N, Fun) ->
    Runs = [Fun() || _ <- lists:seq(1, N)],
    Ms = lists:sort([maps:get(ms, R) || R <- Runs]),
    Last = lists:last(Runs),
    Last#{ms => lists:nth((N + 1) div 2, Ms)}.

ns(Native) -> erlang:convert_time_unit(Native, native, nanosecond).

rss(OsPid) ->
    {ok, B} = file:read_file("/proc/" ++ integer_to_list(OsPid) ++ "/status"),
    [_, Rest] = binary:split(B, <<"VmRSS:">>),
    [Kb | _] = string:lexemes(Rest, " \t\n"),
    binary_to_integer(Kb).

%% utime + stime of a process, in clock ticks (/proc/PID/stat fields 14 and 15).
cpu_ticks(OsPid) ->
    case file:read_file("/proc/" ++ integer_to_list(OsPid) ++ "/stat") of
        {ok, B} ->
            [_, After] = string:split(B, <<")">>, trailing),
            Fields = string:lexemes(After, " "),
            %% After the ")" come fields 3.., so utime (14) and stime (15) are the 12th and 13th.
            binary_to_integer(lists:nth(12, Fields)) + binary_to_integer(lists:nth(13, Fields));
        {error, _} -> 0
    end.

ticks_to_us(Ticks) ->
    Hz = case persistent_term:get({?MODULE, clk_tck}, undefined) of
             undefined ->
                 H = case string:to_integer(os:cmd("getconf CLK_TCK")) of
                         {I, _} when is_integer(I), I > 0 -> I;
                         _ -> 100
                     end,
                 persistent_term:put({?MODULE, clk_tck}, H),
                 H;
             H -> H
         end,
    Ticks * 1.0e6 / Hz.

%%====================================================================
%% Rows and the table
%%====================================================================

val(_Key, {na, _} = Na) -> Na;
val(Key, M) when is_map(M) -> maps:get(Key, M, {na, {missing, Key}});
val(_Key, V) when is_number(V) -> V.

%% Ours and Base: a number, {na, Why} or blank (no baseline). Target: none, {ratio_le, X} (ours/base
%% at most X) or {ge, X} (ours at least X).
row(Metric, Unit, Ours, Base, BaseIs, Target) ->
    #{metric => lists:flatten(Metric), unit => Unit, ours => Ours, base => Base,
      base_is => lists:flatten(BaseIs), target => Target}.

format_table(Rows) ->
    Head = ["metric", "ours", "baseline", "ours/base", "baseline is", "target", "met"],
    Cells = [cells(R) || R <- Rows],
    Widths = lists:foldl(fun(Cs, Ws) -> [max(length(C), W) || {C, W} <- lists:zip(Cs, Ws)] end,
                         [length(H) || H <- Head], Cells),
    Line = fun(Cs) ->
                   Padded = [pad(C, W, I) || {I, {C, W}} <- lists:enumerate(lists:zip(Cs, Widths))],
                   [string:trim(lists:join("  ", Padded), trailing), "\n"]
           end,
    Sep = [lists:duplicate(lists:sum(Widths) + 2 * (length(Widths) - 1), $-), "\n"],
    [Line(Head), Sep, [Line(Cs) || Cs <- Cells]].

%% Metric and "baseline is" left-aligned, numbers right-aligned.
pad(C, W, I) when I =:= 1; I >= 5 -> string:pad(C, W, trailing);
pad(C, W, _) -> string:pad(C, W, leading).

cells(#{metric := M, unit := U, ours := O, base := B, base_is := BI, target := T}) ->
    Ratio = case {O, B} of
                {_, _} when is_number(O), is_number(B), B > 0 -> fmt(O / B, ratio);
                {_, blank} -> "";
                _ -> "n/a"
            end,
    [M, fmt(O, U), fmt(B, U), Ratio, BI, lists:flatten(target_text(T, U)), met(T, O, B)].

fmt({na, _}, _) -> "n/a";
fmt(blank, _) -> "";
fmt(V, ratio) -> float_to_list(V / 1, [{decimals, 2}]);
fmt(V, U) when U =:= us; U =:= ms -> float_to_list(V / 1, [{decimals, 1}]);
fmt(V, mbs) when V < 100 -> float_to_list(V / 1, [{decimals, 1}]);
fmt(V, _) -> integer_to_list(round(V)).

target_text(none, _) -> "";
target_text({ratio_le, X}, _) -> io_lib:format("<= ~sx echo", [fmt(X, us)]);
target_text({ge, X}, cps) -> io_lib:format(">= ~b calls/s", [X]);
target_text({ge, X}, ratio) -> io_lib:format(">= ~sx", [fmt(X, ratio)]);
target_text({ge, X}, mbs) -> io_lib:format(">= ~b MB/s", [X]);
target_text({ge, X}, _) -> io_lib:format(">= ~p", [X]).

met(none, _, _) -> "";
met({ratio_le, X}, O, B) when is_number(O), is_number(B), B > 0 -> yes_no(O / B =< X);
met({ge, X}, O, _) when is_number(O) -> yes_no(O >= X);
met(_, _, _) -> "n/a".

yes_no(true) -> "yes";
yes_no(false) -> "NO".

header(C = #{quick := Quick, p := P, callers := Callers}) ->
    Hello = maps:get(hello, C, #{}),
    Python = case Hello of
                 #{python := V} ->
                     io_lib:format("~s (~p)", [V, maps:get(build, Hello, unknown)]);
                 _ ->
                     case maps:get(app_ok, C, false) andalso
                         catch py:eval(<<"__import__('sys').version.split()[0]">>) of
                         {ok, V} when is_binary(V) -> [V, " (from py:eval)"];
                         _ -> "n/a (no hello from erl/priv/erlang_python_port)"
                     end
             end,
    PyConf = case file:read_file(filename:join(maps:get(priv, C), "python_config")) of
                 {ok, B} -> [", embedded via ", string:trim(B)];
                 _ -> ""
             end,
    AppCfg = case maps:get(app_ok, C, false) of
                 true ->
                     Env = [{K, V} || {K, V} <- application:get_all_env(erlang_python),
                                      lists:member(K, [num_ports, contexts_per_port, codec, spin_us])],
                     io_lib:format("~b port(s); app env ~0p; code from ~s",
                                   [nports(C), Env, filename:dirname(code:which(py))]);
                 false ->
                     ["NOT RUNNING: ", short(maps:get(app_error, C, unknown))]
             end,
    [io_lib:format("erlang_python benchmark (~s run), ~s~n",
                   [case Quick of true -> "quick"; false -> "full" end, timestamp()]),
     io_lib:format("machine: nproc ~b, CPU ~s, ~s~n",
                   [erlang:system_info(logical_processors_available), cpu_model(),
                    string:trim(os:cmd("uname -sr"))]),
     io_lib:format("load average (1/5/15 min) at start ~s, at end ~s~n",
                   [maps:get(loadavg, C, "?"), loadavg()]),
     io_lib:format("OTP ~s (erts ~s); Python ~s~s~n",
                   [erlang:system_info(otp_release), erlang:system_info(version), Python, PyConf]),
     io_lib:format("app: ~s; baseline: _build/bench/echo_port --spin-us ~b~n", [AppCfg, echo_spin(C)]),
     io_lib:format("latency: p50/p99 of ~b sequential calls from one process after ~b warm-up "
                   "(callback/state_incr: ~b), in ~b rounds interleaved with the baseline~n",
                   [maps:get(lat_n, P), maps:get(lat_warm, P), maps:get(cb_n, P), ?ROUNDS]),
     io_lib:format("throughput: ~b concurrent callers, ~b interleaved runs of ~.1f s each side~n",
                   [Callers, ?TP_ROUNDS, maps:get(tp_secs, P) / ?TP_ROUNDS]),
     "bulk: MB/s = payload bytes / round-trip time (1 MB = 10^6 B; the payload crosses the pipe twice "
     "per round trip)\n"].

%% One line per distinct reason a cell shows "n/a", naming the first row it hit.
footnotes(Rows) ->
    Nas = lists:foldl(fun(#{metric := M, ours := O, base := B}, Acc) ->
                              lists:foldl(fun({na, Why}, A) ->
                                                  case A of
                                                      #{Why := {M0, N}} -> A#{Why := {M0, N + 1}};
                                                      _ -> A#{Why => {M, 1}}
                                                  end;
                                             (_, A) -> A
                                          end, Acc, [O, B])
                      end, #{}, Rows),
    More = fun(1) -> ""; (N) -> io_lib:format(", and ~b more", [N - 1]) end,
    case maps:to_list(Nas) of
        [] -> [];
        L -> ["\nn/a because:\n" | [io_lib:format("  ~s (~s~s)~n", [short(Why), string:trim(M), More(N)])
                                    || {Why, {M, N}} <- L]]
    end.

short(Why) ->
    case io_lib:printable_unicode_list(Why) of
        true -> short_string(Why);
        false -> short_string(lists:flatten(io_lib:format("~0p", [Why])))
    end.

short_string(S) ->
    case length(S) > 200 of
        true -> lists:sublist(S, 200) ++ "...";
        false -> S
    end.

cpu_model() ->
    case file:read_file("/proc/cpuinfo") of
        {ok, B} ->
            case re:run(B, "^model name\\s*:\\s*(.*)$", [multiline, {capture, [1], list}]) of
                {match, [M]} -> M;
                nomatch -> "unknown"
            end;
        _ -> "unknown"
    end.

loadavg() ->
    case file:read_file("/proc/loadavg") of
        {ok, B} -> lists:join(" ", lists:sublist(string:lexemes(binary_to_list(B), " "), 3));
        _ -> "?"
    end.

timestamp() ->
    calendar:system_time_to_rfc3339(erlang:system_time(second)).

env_int(Var, Default) ->
    case os:getenv(Var) of
        false -> Default;
        V -> list_to_integer(V)
    end.

progress(Fmt, Args) ->
    io:format(standard_error, "bench: " ++ Fmt ++ "~n", Args).
