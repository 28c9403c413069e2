%% asyncio inside the real port (issue 9): erlang.run and its standard asyncio functions from py:call /
%% py:eval, await erlang.sleep beside the sync erlang.sleep, erlang.send and erlang.async_call from
%% coroutines, erlang.spawn_task from plain code, a TCP echo server with 100 concurrent loopback clients
%% and UDP on the loop, the unsupported methods, asyncio.sleep(0.001) latency and an idle loop's CPU.
-module(py_asyncio_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-export([all/0, init_per_suite/1, end_per_suite/1]).
-export([erlang_run_standard_functions/1, sleep_both_forms/1, send_from_coroutine/1,
	async_call_from_coroutine/1, spawn_task_from_plain_code/1, tcp_echo_100_clients/1, udp_echo/1,
	not_supported/1, sleep_latency/1, idle_loop_no_cpu/1, coroutine_raises_in_run/1]).

all() ->
	[erlang_run_standard_functions, sleep_both_forms, send_from_coroutine, async_call_from_coroutine,
	 spawn_task_from_plain_code, tcp_echo_100_clients, udp_echo, not_supported, sleep_latency,
	 idle_loop_no_cpu, coroutine_raises_in_run].

init_per_suite(Config) ->
	ok = py_ct_helper:start_app([{num_ports, 1}, {contexts_per_port, 2}]),
	Config.

end_per_suite(_Config) ->
	py_ct_helper:stop_app().

erlang_run_standard_functions(_) ->
	ok = py:exec(<<"import asyncio, erlang\n"
		"async def task(n):\n    await asyncio.sleep(0.01)\n    return n * 2\n"
		"async def main():\n"
		"    assert type(asyncio.get_running_loop()) is erlang.ErlangEventLoop\n"
		"    r = await asyncio.gather(task(1), task(2), task(3))\n"
		"    w = await asyncio.wait_for(task(5), timeout=1.0)\n"
		"    t = asyncio.create_task(task(7))\n"
		"    done, pending = await asyncio.wait([asyncio.create_task(asyncio.sleep(0.01)) for _ in range(3)])\n"
		"    try:\n        async with asyncio.timeout(0.01):\n            await asyncio.sleep(10)\n"
		"        to = False\n    except TimeoutError:\n        to = True\n"
		"    return [r, w, await t, len(done), len(pending), to]\n"
		"def run_main():\n    return erlang.run(main())\n"
		"def run_runner():\n    with asyncio.Runner(loop_factory=erlang.new_event_loop) as runner:\n"
		"        return runner.run(task(21))\n">>),
	{ok, [[2, 4, 6], 10, 14, 3, 0, true]} = py:call('__main__', run_main, []),
	{ok, 42} = py:call('__main__', run_runner, []),
	{ok, 42} = py:eval(<<"erlang.run(task(21))">>).

sleep_both_forms(_) ->
	ok = py:exec(<<"import asyncio, erlang, time\n"
		"async def a():\n    t0 = time.monotonic()\n    await erlang.sleep(0.05)\n    return time.monotonic() - t0\n"
		"def s():\n    t0 = time.monotonic()\n    erlang.sleep(0.05)\n    return time.monotonic() - t0\n">>),
	{ok, A} = py:eval(<<"erlang.run(a())">>),
	{ok, S} = py:call('__main__', s, []),
	?assert(A >= 0.045 andalso S >= 0.045),
	%% The caller's deadline still applies to the sync form.
	{error, timeout} = py:call(erlang, sleep, [30], #{}, 100).

send_from_coroutine(_) ->
	ok = py:exec(<<"import asyncio, erlang\nasync def notify(pid):\n    await asyncio.sleep(0.01)\n"
		"    erlang.send(pid, ('hi', 1))\n    return True\n">>),
	{ok, true} = py:eval(<<"erlang.run(notify(p))">>, #{p => self()}),
	receive {<<"hi">>, 1} -> ok after 5000 -> ct:fail(no_message) end,
	%% From a background loop task (py_event_loop) too.
	{ok, true} = py_event_loop:run('__main__', notify, [self()]),
	receive {<<"hi">>, 1} -> ok after 5000 -> ct:fail(no_message_from_task) end.

async_call_from_coroutine(_) ->
	ok = py:register_function(aio_get_user, fun([Id]) -> #{id => Id, name => <<"u">>} end),
	ok = py:register_function(aio_fail, fun([_]) -> error(boom) end),
	ok = py:exec(<<"import asyncio, erlang\nasync def users():\n"
		"    return await asyncio.gather(erlang.async_call('aio_get_user', 1), erlang.async_call('aio_get_user', 2))\n"
		"async def failing():\n    try:\n        await erlang.async_call('aio_fail', 42)\n"
		"    except RuntimeError as e:\n        return 'caught'\n">>),
	%% In a background loop task: the loop thread is not a context, the callbacks run in fresh processes.
	{ok, [#{<<"id">> := 1}, #{<<"id">> := 2}]} = py_event_loop:run('__main__', users, []),
	{ok, <<"caught">>} = py_event_loop:run('__main__', failing, []),
	ok = py:unregister_function(aio_get_user),
	ok = py:unregister_function(aio_fail).

spawn_task_from_plain_code(_) ->
	ok = py:exec(<<"import asyncio, erlang\nasync def later(pid):\n    await asyncio.sleep(0.01)\n"
		"    erlang.send(pid, 'spawned')\n"
		"def handle_request(pid):\n    t = erlang.spawn_task(later(pid))\n    return type(t).__name__\n">>),
	{ok, <<"Task">>} = py:call('__main__', handle_request, [self()]),
	receive <<"spawned">> -> ok after 5000 -> ct:fail(spawn_task_never_ran) end.

tcp_echo_100_clients(_) ->
	ok = py:exec(<<"import asyncio, erlang\n"
		"class Echo(asyncio.Protocol):\n"
		"    def connection_made(self, transport):\n        self.transport = transport\n"
		"    def data_received(self, data):\n        self.transport.write(data)\n"
		"async def client(port, n):\n"
		"    reader, writer = await asyncio.open_connection('127.0.0.1', port)\n"
		"    writer.write(f'hello {n}\\n'.encode())\n    await writer.drain()\n"
		"    line = await reader.readline()\n    writer.close()\n    await writer.wait_closed()\n"
		"    return line == f'hello {n}\\n'.encode()\n"
		"async def serve():\n    loop = asyncio.get_running_loop()\n"
		"    server = await loop.create_server(Echo, host='127.0.0.1', port=0, reuse_address=True, backlog=200)\n"
		"    port = server.sockets[0].getsockname()[1]\n"
		"    async with server:\n"
		"        ok = await asyncio.wait_for(asyncio.gather(*(client(port, n) for n in range(100))), 30)\n"
		"    return sum(ok)\n">>),
	{ok, 100} = py:eval(<<"erlang.run(serve())">>, #{}, 60000).

udp_echo(_) ->
	ok = py:exec(<<"import asyncio, erlang\n"
		"class Srv(asyncio.DatagramProtocol):\n"
		"    def connection_made(self, t):\n        self.t = t\n"
		"    def datagram_received(self, data, addr):\n        self.t.sendto(data, addr)\n"
		"class Cli(asyncio.DatagramProtocol):\n"
		"    def __init__(self, fut):\n        self.fut = fut\n"
		"    def connection_made(self, t):\n        t.sendto(b'Hello UDP!')\n"
		"    def datagram_received(self, data, addr):\n        self.fut.set_result(data)\n"
		"async def udp():\n    loop = asyncio.get_running_loop()\n"
		"    srv, _ = await loop.create_datagram_endpoint(Srv, local_addr=('127.0.0.1', 0))\n"
		"    fut = loop.create_future()\n"
		"    cli, _ = await loop.create_datagram_endpoint(lambda: Cli(fut), remote_addr=srv.get_extra_info('sockname'))\n"
		"    try:\n        return await asyncio.wait_for(fut, 5)\n    finally:\n        cli.close()\n        srv.close()\n">>),
	{ok, <<"Hello UDP!">>} = py:eval(<<"erlang.run(udp())">>).

not_supported(_) ->
	ok = py:exec(<<"import asyncio, erlang\nasync def sub():\n    await asyncio.create_subprocess_shell('true')\n"
		"async def sig():\n    asyncio.get_running_loop().add_signal_handler(15, print)\n">>),
	{error, {'NotImplementedError', M1}} = py:eval(<<"erlang.run(sub())">>),
	?assertNotEqual(nomatch, string:find(M1, "Subprocess operations are not supported")),
	{error, {'NotImplementedError', M2}} = py:eval(<<"erlang.run(sig())">>),
	?assertNotEqual(nomatch, string:find(M2, "Signal handlers not supported")).

%% asyncio.sleep(0.001) costs about a millisecond in the port (median of 50; margin for a loaded box).
sleep_latency(_) ->
	ok = py:exec(<<"import asyncio, erlang, time\nasync def lat():\n    s = []\n    for _ in range(50):\n"
		"        t0 = time.perf_counter()\n        await asyncio.sleep(0.001)\n"
		"        s.append(time.perf_counter() - t0)\n    return sorted(s)[25]\n">>),
	{ok, Median} = py:eval(<<"erlang.run(lat())">>),
	?assert(Median >= 0.001 andalso Median < 0.005).

%% A loop waiting 0.5 s for a timer costs the port (almost) no CPU.
idle_loop_no_cpu(_) ->
	OsPid = py_ct_helper:os_pid(1),
	%% The import first (asyncio's is some 30 ms of CPU where nothing imported it yet): only the wait
	%% is measured.
	ok = py:exec(<<"import asyncio, erlang">>),
	Ticks0 = cpu_ticks(OsPid),
	{ok, none} = py:eval(<<"erlang.run(asyncio.sleep(0.5))">>, #{}, 5000),
	Ticks = cpu_ticks(OsPid) - Ticks0,
	?assert(Ticks =< 5).  % clock ticks (1/100 s): at most 50 ms of CPU over the 0.5 s

coroutine_raises_in_run(_) ->
	ok = py:exec(<<"import asyncio, erlang\nasync def boom():\n    await asyncio.sleep(0)\n    raise KeyError('k')\n">>),
	{error, {'KeyError', _}} = py:eval(<<"erlang.run(boom())">>).

cpu_ticks(OsPid) ->
	{ok, Bin} = file:read_file("/proc/" ++ integer_to_list(OsPid) ++ "/stat"),
	[_, AfterComm] = binary:split(Bin, <<") ">>),
	Fields = binary:split(AfterComm, <<" ">>, [global]),
	binary_to_integer(lists:nth(12, Fields)) + binary_to_integer(lists:nth(13, Fields)).
