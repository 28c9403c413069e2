%% The port's contexts (PROTOCOL.md §3.1, §3.4, §3.6-§3.8), spoken to in raw frames: one request at a
%% time per context and the nested flag, per-context environments keyed by pid or reference,
%% context_init, context_create/destroy (and that nothing piles up over 200 of them), object
%% references, drain/requeue. Each case opens its own port process; both codecs (only the one named by
%% EP_TEST_CODEC when it is set, as tools/test.sh runs every suite once per codec).
-module(py_port_contexts_SUITE).

-include_lib("common_test/include/ct.hrl").

-export([all/0, groups/0, init_per_group/2, end_per_group/2, init_per_testcase/2, end_per_testcase/2]).
-export([queued_waits_for_running/1, nested_served_while_waiting/1, cancel_not_held_by_queued/1,
	flags/1, envs_per_context/1, context_init_base/1, context_init_paths_imports/1,
	create_destroy/1, create_destroy_200/1, context_limit/1, object_refs/1, objects_freed/1,
	drain_requeue/1]).

-define(RESULT, 65).
-define(ERROR, 66).
-define(PROTOCOL_ERROR, 70).
-define(OUTPUT, 69).
-define(ENV_CREATED, 71).
-define(REQUEUE, 75).
-define(NESTED, 1).

all() ->
	case os:getenv("EP_TEST_CODEC") of
		"etf" -> [{group, etf}];
		"msgpack" -> [{group, msgpack}];
		_ -> [{group, etf}, {group, msgpack}]
	end.

groups() ->
	Cases = [queued_waits_for_running, nested_served_while_waiting, cancel_not_held_by_queued, flags,
		envs_per_context, context_init_base, context_init_paths_imports, create_destroy,
		create_destroy_200, context_limit, object_refs, objects_freed, drain_requeue],
	[{etf, [], Cases}, {msgpack, [], Cases}].

init_per_group(Codec, Config) ->
	[{codec, Codec} | Config].

end_per_group(_, _Config) ->
	ok.

init_per_testcase(Case, Config0) ->
	%% a case run on its own (--case, no group) gets the default codec
	Codec = proplists:get_value(codec, Config0, etf),
	Config = [{codec, Codec} | proplists:delete(codec, Config0)],
	Priv = code:priv_dir(erlang_python),
	Pylib = filename:join(Priv, "pylib"),
	%% EP_TEST_PORT_EXE runs the cases against another build (a sanitizer one, say).
	Exe = case os:getenv("EP_TEST_PORT_EXE") of
		false -> filename:join(Priv, "erlang_python_port");
		Other -> Other
	end,
	Port = open_port({spawn_executable, Exe},
		[{packet, 4}, binary, exit_status, use_stdio,
		 {args, ["--codec", atom_to_list(Codec), "--contexts", "2", "--pylib", Pylib] ++ extra_args(Case)}]),
	receive
		{Port, {data, <<64, 0, 0:16, 0:32, 0:64, Body/binary>>}} ->
			#{protocol := 2, contexts := [1, 2], os_pid := OsPid} = py_codec:decode(Codec, Body),
			[{port, Port}, {os_pid, OsPid}, {pylib, list_to_binary(Pylib)} | Config];
		{Port, {exit_status, Status}} ->
			error({port_exited, Status})
	after 30000 ->
		error(no_hello)
	end.

extra_args(context_limit) -> ["--max-contexts", "4"];
extra_args(_) -> [].

end_per_testcase(_Case, Config) ->
	Port = ?config(port, Config),
	catch port_close(Port),
	ok.

%% §3.4: a request that waits inside the port (erlang.sleep) holds its context; another request for
%% that context is answered only after it.
queued_waits_for_running(C) ->
	A = eval(C, 1, undefined, <<"erlang.sleep(1) or 'a'">>),
	B = eval(C, 1, undefined, <<"1+1">>),
	nothing_for(C, B, 600),
	{result, <<"a">>} = reply(C, A),
	{result, 2} = reply(C, B),
	ok.

%% ... unless it carries the nested flag: then it is served while the first one waits, ahead of
%% the ordinary requests queued before it, which keep their order.
nested_served_while_waiting(C) ->
	A = eval(C, 1, undefined, <<"erlang.sleep(3) or 'a'">>),
	Q1 = eval(C, 1, undefined, <<"'q1'">>),
	Q2 = eval(C, 1, undefined, <<"'q2'">>),
	T0 = erlang:monotonic_time(millisecond),
	B = eval(C, ?NESTED, 1, undefined, <<"1+1">>),
	{B, {result, 2}} = next_final(C),
	true = py_ct_helper:elapsed_ms(T0) < 2500,
	[{A, {result, <<"a">>}}, {Q1, {result, <<"q1">>}}, {Q2, {result, <<"q2">>}}] =
		[next_final(C) || _ <- [1, 2, 3]],
	%% nested on an idle context is an ordinary request
	{result, 3} = reply(C, eval(C, ?NESTED, 2, undefined, <<"1+2">>)),
	ok.

%% A cancelled request ends at once even with a (slow) request queued behind it: that one is not
%% served on its stack.
cancel_not_held_by_queued(C) ->
	A = eval(C, 1, undefined, <<"print('started') or erlang.sleep(10)">>),
	B = eval(C, 1, undefined, <<"erlang.sleep(3) or 'b'">>),
	ok = started(C, A),
	T0 = erlang:monotonic_time(millisecond),
	send(C, cancel, 1, A, []),
	{error, {<<"CancelledError">>, _, _}} = reply(C, A, 2500),
	true = py_ct_helper:elapsed_ms(T0) < 2500,
	{result, <<"b">>} = reply(C, B),
	ok.

%% §1.1: the nested bit is the only flag, and only on call/eval/exec/ref_op.
flags(C) ->
	Eval = {undefined, <<"1">>, #{}},
	{protocol_error, {bad_flags, _}} = reply(C, request(C, eval, 2, 1, Eval)),
	{protocol_error, {bad_flags, _}} = reply(C, request(C, eval, 3, 1, Eval)),
	{protocol_error, {bad_flags, _}} = reply(C, request(C, cast, ?NESTED, 1, {undefined, builtins, len, [[]], #{}})),
	{protocol_error, {bad_flags, _}} = reply(C, request(C, stats, ?NESTED, 0, [])),
	{result, 1} = reply(C, request(C, eval, ?NESTED, 1, Eval)),
	{result, none} = reply(C, request(C, exec, ?NESTED, 1, {undefined, <<"pass">>})),
	{result, 3} = reply(C, request(C, call, ?NESTED, 1, {undefined, builtins, len, [[1, 2, 3]], #{}})),
	ok.

%% §3.1: one environment per Env per context; pids are announced once per port, references never;
%% env_drop frees a key's environments in every context.
envs_per_context(C) ->
	P = self(),
	{result, none} = exec(C, 1, P, <<"x = 1">>),
	{result, 1} = ask(C, 1, P, <<"x">>),
	{error, {<<"NameError">>, _, _}} = ask(C, 2, P, <<"x">>),
	[P] = env_created(C),
	R = make_ref(),
	{result, none} = exec(C, 1, R, <<"y = 2">>),
	{result, 2} = ask(C, 1, R, <<"y">>),
	{error, {<<"NameError">>, _, _}} = ask(C, 1, make_ref(), <<"y">>),
	{error, {<<"NameError">>, _, _}} = ask(C, 1, P, <<"y">>),
	{error, {<<"NameError">>, _, _}} = ask(C, 2, R, <<"y">>),
	[] = env_created(C),
	%% P in 1 and 2, R in 1 and 2, the other reference in 1
	#{envs := 5} = stats(C),
	{error, {<<"TypeError">>, _, _}} = ask(C, 1, 42, <<"1">>),
	#{envs := 5} = stats(C),
	env_drop(C, P),
	py_ct_helper:eventually(fun() -> maps:get(envs, stats(C)) =:= 3 end, 5000),
	{error, {<<"NameError">>, _, _}} = ask(C, 1, P, <<"x">>),
	[P] = env_created(C),
	env_drop(C, R),
	py_ct_helper:eventually(fun() -> maps:get(envs, stats(C)) =:= 2 end, 5000),
	{error, {<<"NameError">>, _, _}} = ask(C, 1, R, <<"y">>),
	[] = env_created(C),
	ok.

%% §3.6: the preload is the base of the context's environments; each gets its own copy.
context_init_base(C) ->
	{result, ok} = context_init(C, 1, {[], [], <<"COUNTER = 0\nNAMES = ['base']">>}),
	P1 = self(),
	P2 = make_ref(),
	{result, 0} = ask(C, 1, P1, <<"COUNTER">>),
	{error, {<<"NameError">>, _, _}} = ask(C, 2, P1, <<"COUNTER">>),
	{result, none} = exec(C, 1, P1, <<"COUNTER = 100">>),
	{result, 100} = ask(C, 1, P1, <<"COUNTER">>),
	{result, 0} = ask(C, 1, P2, <<"COUNTER">>),
	{result, 0} = ask(C, 1, undefined, <<"COUNTER">>),
	{result, <<"__main__">>} = ask(C, 1, P2, <<"__name__">>),
	{result, true} = ask(C, 1, P2, <<"erlang.__name__ == 'erlang' and callable(len)">>),
	%% a copy as dict.copy() makes it: rebinding is private, the objects are the base's
	{result, none} = exec(C, 1, P1, <<"NAMES.append('p1')">>),
	{result, [<<"base">>, <<"p1">>]} = ask(C, 1, P2, <<"NAMES">>),
	%% a failed preload is an error reply, and leaves the base as it was
	{error, {<<"ZeroDivisionError">>, _, _}} = context_init(C, 1, {[], [], <<"X = 1\n1/0">>}),
	{result, 0} = ask(C, 1, make_ref(), <<"COUNTER">>),
	%% undefined: no base any more
	{result, ok} = context_init(C, 1, {[], [], undefined}),
	{error, {<<"NameError">>, _, _}} = ask(C, 1, make_ref(), <<"COUNTER">>),
	ok.

%% §3.6: paths go into sys.path once, in order, right after the port's pylib; imports are checked.
context_init_paths_imports(C) ->
	Pylib = ?config(pylib, C),
	D1 = <<"/tmp/ep_ctx_path_a">>,
	D2 = <<"/tmp/ep_ctx_path_b">>,
	Head = <<"__import__('sys').path[:3]">>,
	{result, ok} = context_init(C, 1, {[D1, D2], [{json, dumps}, {os, all}, {<<"os.path">>, join}], undefined}),
	{result, [Pylib, D1, D2]} = ask(C, 1, undefined, Head),
	{result, ok} = context_init(C, 2, {[D1, D2, D1], [], undefined}),
	{result, [Pylib, D1, D2]} = ask(C, 2, undefined, Head),
	{result, 1} = ask(C, 2, undefined, <<"__import__('sys').path.count('/tmp/ep_ctx_path_a')">>),
	{result, ok} = context_init(C, 2, {[D2, D1], [], undefined}),
	{result, [Pylib, D2, D1]} = ask(C, 1, undefined, Head),
	{error, {<<"ModuleNotFoundError">>, _, _}} =
		context_init(C, 1, {[], [{json, all}, {no_such_module_xyz, all}], undefined}),
	{error, {<<"AttributeError">>, _, _}} = context_init(C, 1, {[], [{json, no_such_function}], undefined}),
	{protocol_error, {bad_shape, _}} = context_init(C, 1, {not_a_list, [], undefined}),
	{protocol_error, {bad_shape, _}} = context_init(C, 1, {[], [json], undefined}),
	{protocol_error, {unknown_context, _}} = context_init(C, 9, {[], [], undefined}),
	ok.

%% context_create {worker} / context_destroy: queued work finishes first; another mode is refused.
create_destroy(C) ->
	{result, ok} = request_reply(C, context_create, 10, {worker}),
	{result, 10} = ask(C, 10, undefined, <<"__import__('_erlang')._current_context()">>),
	A = eval(C, 10, undefined, <<"erlang.sleep(0.5) or 'a'">>),
	B = eval(C, 10, undefined, <<"'b'">>),
	D = request(C, context_destroy, 0, 10, []),
	[{A, {result, <<"a">>}}, {B, {result, <<"b">>}}, {D, {result, ok}}] = [next_final(C) || _ <- [1, 2, 3]],
	{protocol_error, {unknown_context, _}} = ask(C, 10, undefined, <<"1">>),
	{protocol_error, {unknown_context, _}} = request_reply(C, context_destroy, 10, []),
	%% another mode: refused, and the id stays free
	{error, {<<"ValueError">>, <<"unsupported context mode: auto">>, _}} =
		request_reply(C, context_create, 11, {auto}),
	{protocol_error, {unknown_context, _}} = ask(C, 11, undefined, <<"1">>),
	{protocol_error, {bad_shape, _}} = request_reply(C, context_create, 12, not_a_tuple),
	{result, ok} = request_reply(C, context_create, 11, {worker}),
	{protocol_error, {bad_shape, _}} = request_reply(C, context_create, 11, {worker}),
	{protocol_error, {bad_shape, _}} = request_reply(C, context_create, 0, {worker}),
	{protocol_error, {bad_shape, _}} = request_reply(C, context_create, 1, {worker}),
	%% destroy frees the context's environments and objects
	#{envs := 0, objects := 0, contexts := 3} = stats(C),
	{result, none} = exec(C, 11, self(), <<"big = list(range(1000))">>),
	{result, {py_ref, _, <<"list">>}} = call(C, 11, make_ref(), builtins, list, [[1]], #{return => ref}),
	#{envs := 2, objects := 1} = stats(C),
	{result, ok} = request_reply(C, context_destroy, 11, []),
	#{envs := 0, objects := 0, contexts := 2} = stats(C),
	%% the built-in contexts can go too
	{result, ok} = request_reply(C, context_destroy, 2, []),
	{protocol_error, {unknown_context, _}} = ask(C, 2, undefined, <<"1">>),
	{result, 1} = ask(C, 1, undefined, <<"1">>),
	ok.

%% 200 contexts created, used and destroyed: threads, environments, objects and contexts stay flat.
create_destroy_200(C) ->
	Threads0 = threads(C),
	Stats0 = stats(C),
	_ = [begin
		Ctx = 100 + (I rem 7),
		{result, ok} = request_reply(C, context_create, Ctx, {worker}),
		{result, none} = exec(C, Ctx, self(), <<"data = [object() for _ in range(100)]">>),
		{result, {py_ref, _, <<"list">>}} = call(C, Ctx, self(), builtins, list, [[I]], #{return => ref}),
		{result, ok} = request_reply(C, context_destroy, Ctx, [])
	end || I <- lists:seq(1, 200)],
	Stats0 = stats(C),
	py_ct_helper:eventually(fun() -> _ = stats(C), threads(C) =:= Threads0 end, 5000),
	ok.

%% Contexts are threads: past --max-contexts (the start-up ones included) a create is refused until
%% one is destroyed.
context_limit(C) ->
	{result, ok} = request_reply(C, context_create, 3, {worker}),
	{result, ok} = request_reply(C, context_create, 4, {worker}),
	{error, {<<"RuntimeError">>, Msg, _}} = request_reply(C, context_create, 5, {worker}),
	true = binary:match(Msg, <<"--max-contexts">>) =/= nomatch,
	{protocol_error, {unknown_context, _}} = ask(C, 5, undefined, <<"1">>),
	#{contexts := 4} = stats(C),
	{result, ok} = request_reply(C, context_destroy, 3, []),
	%% the destroyed one counts until its thread is joined, which follows its answer closely
	py_ct_helper:eventually(fun() ->
		request_reply(C, context_create, 5, {worker}) =:= {result, ok} end, 5000),
	{result, 5} = ask(C, 5, undefined, <<"__import__('_erlang')._current_context()">>),
	ok.

%% §3.8: a call with #{return => ref} keeps its result; ref_op works on it within its Env and context.
object_refs(C) ->
	P = self(),
	{result, none} = exec(C, 1, P, box_source()),
	{result, {py_ref, Id, <<"Box">>}} = call(C, 1, P, '__main__', make, [5], #{return => ref}),
	true = is_integer(Id) andalso Id > 0,
	1 = alive(C),
	{result, 5} = ref_op(C, 1, P, Id, getattr, v, [], #{}),
	{result, 8} = ref_op(C, 1, P, Id, call_method, add, [1], #{times => 3}),
	{result, 8} = ref_op(C, 1, P, Id, getattr, v, [], #{}),
	{error, {<<"TypeError">>, _, _}} = ref_op(C, 1, P, Id, to_term, undefined, [], #{}),
	{error, {<<"AttributeError">>, _, _}} = ref_op(C, 1, P, Id, getattr, nope, [], #{}),
	{error, {<<"ValueError">>, _, _}} = ref_op(C, 1, P, Id, call_method, fail, [], #{}),
	%% the object belongs to {Env, context}
	{error, {<<"KeyError">>, _, _}} = ref_op(C, 2, P, Id, getattr, v, [], #{}),
	{error, {<<"KeyError">>, _, _}} = ref_op(C, 1, make_ref(), Id, getattr, v, [], #{}),
	{error, {<<"KeyError">>, _, _}} = ref_op(C, 1, P, 999999999, to_term, undefined, [], #{}),
	{protocol_error, {bad_shape, _}} = ref_op(C, 1, P, Id, frobnicate, undefined, [], #{}),
	{protocol_error, {bad_shape, _}} = request_reply(C, ref_op, 1, {P, Id, getattr}),
	{result, {py_ref, L, <<"list">>}} = call(C, 1, P, builtins, list, [[1, 2, 3]], #{return => ref}),
	true = L =/= Id,
	{result, [1, 2, 3]} = ref_op(C, 1, P, L, to_term, undefined, [], #{}),
	{result, none} = ref_op(C, 1, P, L, call_method, append, [4], #{}),
	{result, [1, 2, 3, 4]} = ref_op(C, 1, P, L, to_term, undefined, [], #{}),
	%% without the option (or with another) the value itself comes back
	{result, [7]} = call(C, 1, P, builtins, list, [[7]], #{return => value}),
	#{objects := 2} = stats(C),
	{result, ok} = ref_op(C, 1, P, Id, release, undefined, [], #{}),
	0 = alive(C),
	{error, {<<"KeyError">>, _, _}} = ref_op(C, 1, P, Id, release, undefined, [], #{}),
	{error, {<<"KeyError">>, _, _}} = ref_op(C, 1, P, Id, getattr, v, [], #{}),
	#{objects := 1} = stats(C),
	ok.

%% Objects go with env_drop of their Env and with their context.
objects_freed(C) ->
	P = self(),
	{result, none} = exec(C, 1, P, box_source()),
	{result, {py_ref, _, <<"Box">>}} = call(C, 1, P, '__main__', make, [1], #{return => ref}),
	{result, {py_ref, _, <<"Box">>}} = call(C, 1, P, '__main__', make, [2], #{return => ref}),
	2 = alive(C),
	env_drop(C, P),
	py_ct_helper:eventually(fun() -> alive(C) =:= 0 end, 5000),
	#{objects := 0} = stats(C),
	{result, ok} = request_reply(C, context_create, 20, {worker}),
	R = make_ref(),
	{result, none} = exec(C, 20, R, box_source()),
	{result, {py_ref, Id, <<"Box">>}} = call(C, 20, R, '__main__', make, [3], #{return => ref}),
	1 = alive(C),
	{result, ok} = request_reply(C, context_destroy, 20, []),
	0 = alive(C),
	{protocol_error, {unknown_context, _}} = ref_op(C, 20, R, Id, to_term, undefined, [], #{}),
	%% an undefined Env keeps objects too, until the context goes
	{result, ok} = request_reply(C, context_create, 21, {worker}),
	{result, none} = exec(C, 21, undefined, box_source()),
	{result, {py_ref, _, <<"Box">>}} = call(C, 21, undefined, '__main__', make, [4], #{return => ref}),
	1 = alive(C),
	{result, ok} = request_reply(C, context_destroy, 21, []),
	0 = alive(C),
	ok.

%% §3.7: drain answers every queued, not-started request with requeue at once, and every later one;
%% the running request finishes.
drain_requeue(C) ->
	A = eval(C, 1, undefined, <<"print('started') or erlang.sleep(2) or 'a'">>),
	ok = started(C, A),
	Q = [eval(C, 1, undefined, <<"1+1">>),
	     request(C, exec, 0, 1, {undefined, <<"z = 1">>}),
	     request(C, cast, 0, 1, {undefined, builtins, len, [[]], #{}})],
	T0 = erlang:monotonic_time(millisecond),
	send(C, drain, 0, 0, []),
	_ = [{requeue, []} = reply(C, Id, 1500) || Id <- Q],
	true = py_ct_helper:elapsed_ms(T0) < 1500,
	{result, <<"a">>} = reply(C, A),
	{requeue, []} = ask(C, 2, undefined, <<"1">>),
	{requeue, []} = call(C, 1, undefined, builtins, len, [[]], #{}),
	{protocol_error, {unknown_context, _}} = ask(C, 9, undefined, <<"1">>),
	#{contexts := 2} = stats(C),
	ok.

%% Helpers.

box_source() ->
	<<"import sys, types, weakref\n"
	  "reg = sys.modules.setdefault('ep_ref_reg', types.ModuleType('ep_ref_reg'))\n"
	  "reg.W = getattr(reg, 'W', [])\n"
	  "class Box:\n"
	  "    def __init__(self, v): self.v = v\n"
	  "    def add(self, n, times=1):\n"
	  "        self.v += n * times\n"
	  "        return self.v\n"
	  "    def fail(self): raise ValueError('no')\n"
	  "def make(v):\n"
	  "    b = Box(v)\n"
	  "    reg.W.append(weakref.ref(b))\n"
	  "    return b\n">>.

%% Boxes still alive (asked in context 2's default environment, or 1's once 2 is gone).
alive(C) ->
	Code = <<"sum(1 for w in __import__('ep_ref_reg').W if w() is not None)">>,
	case ask(C, 2, undefined, Code) of
		{result, N} -> N;
		{protocol_error, {unknown_context, _}} -> {result, N} = ask(C, 1, undefined, Code), N
	end.

codec(C) -> ?config(codec, C).

new_id() -> erlang:unique_integer([positive]).

send(C, Kind, Ctx, Id, Body) ->
	send(C, Kind, 0, Ctx, Id, Body).

send(C, Kind, Flags, Ctx, Id, Body) ->
	[<<K, 0, Rest/binary>> | Encoded] = py_codec:frame(Kind, Ctx, Id, codec(C), Body),
	true = port_command(?config(port, C), [<<K, Flags, Rest/binary>> | Encoded]),
	ok.

request(C, Kind, Flags, Ctx, Body) ->
	Id = new_id(),
	ok = send(C, Kind, Flags, Ctx, Id, Body),
	Id.

request_reply(C, Kind, Ctx, Body) ->
	reply(C, request(C, Kind, 0, Ctx, Body)).

eval(C, Ctx, Env, Code) ->
	eval(C, 0, Ctx, Env, Code).

eval(C, Flags, Ctx, Env, Code) ->
	request(C, eval, Flags, Ctx, {Env, Code, #{}}).

ask(C, Ctx, Env, Code) ->
	reply(C, eval(C, Ctx, Env, Code)).

exec(C, Ctx, Env, Code) ->
	request_reply(C, exec, Ctx, {Env, Code}).

call(C, Ctx, Env, M, F, Args, Opts) ->
	request_reply(C, call, Ctx, {Env, M, F, Args, #{}, Opts}).

ref_op(C, Ctx, Env, ObjId, Op, Name, Args, Kwargs) ->
	request_reply(C, ref_op, Ctx, {Env, ObjId, Op, Name, Args, Kwargs}).

context_init(C, Ctx, Body) ->
	request_reply(C, context_init, Ctx, Body).

env_drop(C, Env) ->
	send(C, env_drop, 0, 0, Env).

stats(C) ->
	{result, Stats} = request_reply(C, stats, 0, []),
	Stats.

threads(C) ->
	length(filelib:wildcard("/proc/" ++ integer_to_list(?config(os_pid, C)) ++ "/task/*")).

%% The final frame for request Id, decoded: {result | error | protocol_error | requeue, Body}.
reply(C, Id) ->
	reply(C, Id, 15000).

reply(C, Id, Timeout) ->
	Port = ?config(port, C),
	receive
		{Port, {data, <<K, 0, 0:16, _Ctx:32, Id:64, Body/binary>>}}
				when K =:= ?RESULT; K =:= ?ERROR; K =:= ?PROTOCOL_ERROR; K =:= ?REQUEUE ->
			{final_kind(K), py_codec:decode(codec(C), Body)};
		{Port, {exit_status, Status}} ->
			error({port_exited, Status})
	after Timeout ->
		error({no_reply, Id})
	end.

%% The next final frame of any request: {Id, {Kind, Body}}.
next_final(C) ->
	Port = ?config(port, C),
	receive
		{Port, {data, <<K, 0, 0:16, _Ctx:32, Id:64, Body/binary>>}}
				when K =:= ?RESULT; K =:= ?ERROR; K =:= ?PROTOCOL_ERROR; K =:= ?REQUEUE ->
			{Id, {final_kind(K), py_codec:decode(codec(C), Body)}}
	after 15000 ->
		error(no_reply)
	end.

%% Waits for request Id's first output frame: the request has started (it prints first thing).
started(C, Id) ->
	Port = ?config(port, C),
	receive
		{Port, {data, <<?OUTPUT, 0, 0:16, _:32, Id:64, _/binary>>}} -> ok;
		{Port, {exit_status, Status}} -> error({port_exited, Status})
	after 15000 ->
		error({not_started, Id})
	end.

%% Asserts that no final frame for Id arrives within Ms.
nothing_for(C, Id, Ms) ->
	Port = ?config(port, C),
	receive
		{Port, {data, <<K, 0, 0:16, _:32, Id:64, _/binary>>}}
				when K =:= ?RESULT; K =:= ?ERROR; K =:= ?PROTOCOL_ERROR; K =:= ?REQUEUE ->
			error({early_reply, Id})
	after Ms ->
		ok
	end.

%% The env_created frames received so far (their pids, in order).
env_created(C) ->
	Port = ?config(port, C),
	receive
		{Port, {data, <<?ENV_CREATED, 0, 0:16, _:32, 0:64, Body/binary>>}} ->
			[py_codec:decode(codec(C), Body) | env_created(C)]
	after 0 ->
		[]
	end.

final_kind(?RESULT) -> result;
final_kind(?ERROR) -> error;
final_kind(?PROTOCOL_ERROR) -> protocol_error;
final_kind(?REQUEUE) -> requeue.
