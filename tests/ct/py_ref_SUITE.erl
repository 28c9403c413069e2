%% Python object references: #{return => ref}, call_method/getattr/to_term/is_ref, release, freeing
%% with the owning process, and stale references after a port restart. The cases that need the
%% port's ref_op (PROTOCOL.md §3.8) are marked and skip until the port answers it.
-module(py_ref_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-export([ref_op_from_callback_on_same_context/1]).
-export([all/0, init_per_suite/1, end_per_suite/1]).
-export([is_ref_false_for_other_terms/1, call_body_strips_return_ref/1, other_return_values_pass_through/1,
	ref_value_is_ref/1, stale_generation_refused/1, unknown_slot_refused/1,
	docs_example/1, docs_example_context_form/1, getattr/1, to_term/1, object_stays_in_port/1,
	unconvertible_object_as_ref/1, kwargs_beside_return_ref/1, method_error/1, release/1,
	freed_when_owner_exits/1, usable_from_another_process/1, stale_after_port_restart/1]).

all() ->
	[is_ref_false_for_other_terms, call_body_strips_return_ref, other_return_values_pass_through,
	 ref_value_is_ref, stale_generation_refused, unknown_slot_refused,
	 docs_example, docs_example_context_form, getattr, to_term, object_stays_in_port,
	 unconvertible_object_as_ref, kwargs_beside_return_ref, method_error, release,
	 freed_when_owner_exits, usable_from_another_process, stale_after_port_restart,
	 ref_op_from_callback_on_same_context].

init_per_suite(Config) ->
	ok = py_ct_helper:start_app([{num_ports, 2}, {contexts_per_port, 2}]),
	Config.

end_per_suite(_Config) ->
	py_import:clear_paths(),
	py_ct_helper:stop_app().

%% Nothing but a reference is one: not the wire tuple, not an Erlang reference.
is_ref_false_for_other_terms(_) ->
	false = py:is_ref(make_ref()),
	false = py:is_ref({py_ref, 1, <<"list">>}),
	false = py:is_ref(self()),
	false = py:is_ref(42),
	false = py:is_ref([]).

%% return => ref is taken out of the keyword arguments and asks for a reference (the 6-tuple body).
call_body_strips_return_ref(_) ->
	Env = self(),
	?assertEqual({Env, builtins, dict, [], #{a => 1}, #{return => ref}},
		py_ref:call_body(Env, builtins, dict, [], #{return => ref, a => 1})),
	?assertEqual({Env, builtins, dict, [], #{a => 1}}, py_ref:call_body(Env, builtins, dict, [], #{a => 1})).

%% Only return => ref is special: another value of the key is a keyword argument like any other
%% (Python accepts it through **kwargs).
other_return_values_pass_through(_) ->
	{ok, #{<<"return">> := 1}} = py:call(builtins, dict, [], #{return => 1}).

ref_value_is_ref(_) ->
	Ref = py_ref:new(1, 1, 1, self(), 7, <<"list">>),
	true = py:is_ref(Ref),
	<<"list">> = py_ref:type_name(Ref).

%% A reference into an OS process that is not the slot's current one is stale: every operation
%% says so without sending anything.
stale_generation_refused(_) ->
	#{generation := Gen, contexts := Contexts} = py_port:info(1),
	Ref = py_ref:new(1, element(1, Contexts), Gen + 1000, self(), 1, <<"list">>),
	{error, stale_ref} = py:call_method(Ref, '__len__', []),
	{error, stale_ref} = py:getattr(Ref, '__class__'),
	{error, stale_ref} = py:to_term(Ref),
	{error, stale_ref} = py_ref:release(Ref).

unknown_slot_refused(_) ->
	Ref = py_ref:new(99, 1, 1, self(), 1, <<"list">>),
	{error, stale_ref} = py:to_term(Ref).

%% The docs' example, on the default pool.
docs_example(_) ->
	with_ref_op(fun() ->
		{ok, Ref} = py:call(builtins, list, [[1, 2, 3]], #{return => ref}),
		true = py:is_ref(Ref),
		<<"list">> = py_ref:type_name(Ref),
		{ok, 3} = py:call_method(Ref, '__len__', [])
	end).

%% The docs' example as written, with an explicit context.
docs_example_context_form(_) ->
	with_ref_op(fun() ->
		{ok, Ctx} = py_context:new(#{mode => worker}),
		{ok, Ref} = py:call(Ctx, builtins, list, [[1, 2, 3]], #{return => ref}),
		{ok, 3} = py:call_method(Ref, '__len__', []),
		_ = (catch py_context:stop(Ctx)),
		ok
	end).

%% getattr reads an attribute of the object.
getattr(_) ->
	with_ref_op(fun() ->
		{ok, Ref} = py:call(fractions, 'Fraction', [3, 4], #{return => ref}),
		{ok, 3} = py:getattr(Ref, numerator),
		{ok, 4} = py:getattr(Ref, <<"denominator">>),
		{error, {'AttributeError', _}} = py:getattr(Ref, no_such_attribute)
	end).

%% to_term gives what the call would have returned.
to_term(_) ->
	with_ref_op(fun() ->
		{ok, Ref} = py:call(builtins, list, [[1, 2, 3]], #{return => ref}),
		{ok, [1, 2, 3]} = py:to_term(Ref)
	end).

%% The object lives on in the port: a method that mutates it is seen by the next operation.
object_stays_in_port(_) ->
	with_ref_op(fun() ->
		{ok, Ref} = py:call(builtins, list, [[1, 2, 3]], #{return => ref}),
		{ok, none} = py:call_method(Ref, append, [4]),
		{ok, [1, 2, 3, 4]} = py:to_term(Ref),
		{ok, 4} = py:call_method(Ref, '__len__', [])
	end).

%% An object with no term form (a set) can be held and used by reference; to_term on it
%% is the usual TypeError.
unconvertible_object_as_ref(_) ->
	with_ref_op(fun() ->
		{ok, Ref} = py:call(builtins, set, [[1, 2, 2]], #{return => ref}),
		<<"set">> = py_ref:type_name(Ref),
		{ok, 2} = py:call_method(Ref, '__len__', []),
		{ok, true} = py:call_method(Ref, '__contains__', [2]),
		{error, {'TypeError', _}} = py:to_term(Ref)
	end).

%% The other keyword arguments still reach the function.
kwargs_beside_return_ref(_) ->
	with_ref_op(fun() ->
		{ok, Ref} = py:call(builtins, dict, [], #{return => ref, a => 1}),
		{ok, #{<<"a">> := 1}} = py:to_term(Ref),
		{ok, Ref5} = py:call(builtins, list, [[1]], #{return => ref}, 5000),
		{ok, [1]} = py:to_term(Ref5)
	end).

%% A method that raises gives the usual error term.
method_error(_) ->
	with_ref_op(fun() ->
		{ok, Ref} = py:call(builtins, list, [[]], #{return => ref}),
		{error, {'IndexError', "pop from empty list"}} = py:call_method(Ref, pop, []),
		{error, {'AttributeError', _}} = py:call_method(Ref, no_such_method, [])
	end).

%% After release the object is gone: operations get the port's KeyError.
release(_) ->
	with_ref_op(fun() ->
		{ok, Ref} = py:call(builtins, list, [[1]], #{return => ref}),
		ok = py_ref:release(Ref),
		{error, {'KeyError', _}} = py:to_term(Ref)
	end).

%% The objects of a process are freed when it exits (its environment's env_drop), and
%% release frees one at once.
freed_when_owner_exits(Config) ->
	with_ref_op(fun() ->
		ok = tracker_module(Config),
		Alive = fun() -> eval_on(1, <<"__import__('hx2_track').alive()">>) end,
		{ok, 0} = Alive(),
		Self = self(),
		{Owner, MRef} = py_ct_helper:spawn_on(1, 0, fun() ->
			{ok, R1} = py:call(hx2_track, make, [], #{return => ref}),
			{ok, R2} = py:call(hx2_track, make, [], #{return => ref}),
			Self ! {made, self()},
			receive release_one -> ok = py_ref:release(R1) after 10000 -> ok end,
			Self ! {released, self()},
			receive exit -> R2 after 10000 -> R2 end
		end),
		receive {made, Owner} -> ok after 10000 -> error(no_refs) end,
		{ok, 2} = Alive(),
		Owner ! release_one,
		receive {released, Owner} -> ok after 10000 -> error(no_release) end,
		{ok, 1} = Alive(),
		Owner ! exit,
		receive {'DOWN', MRef, process, Owner, _} -> ok after 10000 -> error(owner_stuck) end,
		ok = py_ct_helper:eventually(fun() -> Alive() =:= {ok, 0} end, 5000)
	end).

%% Another process can use a reference while its owner lives (it goes to the owner's
%% environment in the object's context).
usable_from_another_process(_) ->
	with_ref_op(fun() ->
		{ok, Ref} = py:call(builtins, list, [[1, 2]], #{return => ref}),
		Self = self(),
		_ = spawn(fun() -> Self ! {len, py:call_method(Ref, '__len__', [])} end),
		receive {len, {ok, 2}} -> ok after 10000 -> error(no_len) end
	end).

%% After its port restarted, a reference is stale (the object died with the OS process).
stale_after_port_restart(_) ->
	with_ref_op(fun() ->
		%% Made by a process on slot 1 that stays alive (its exit would free the object anyway).
		Self = self(),
		{Owner, MRef} = py_ct_helper:spawn_routed({1, 0}, fun() ->
			Self ! {ref, self(), py:call(builtins, list, [[1]], #{return => ref})},
			receive exit -> ok after 30000 -> ok end
		end),
		Ref = receive {ref, Owner, {ok, R}} -> R after 10000 -> error(no_ref) end,
		{ok, 1} = py:call_method(Ref, '__len__', []),
		Gen = py_ct_helper:generation(1),
		_ = os:cmd("kill -9 " ++ integer_to_list(py_ct_helper:os_pid(1))),
		ok = py_ct_helper:eventually(fun() ->
			case py_port:info(1) of
				#{status := up, generation := G} -> G > Gen;
				_ -> false
			end
		end, 10000),
		{error, stale_ref} = py:call_method(Ref, '__len__', []),
		{error, stale_ref} = py:to_term(Ref),
		Owner ! exit,
		receive {'DOWN', MRef, process, Owner, _} -> ok after 10000 -> error(owner_stuck) end
	end).

%% Internal.

with_ref_op(Fun) ->
	Fun().

eval_on(Slot, Code) ->
	py_request:run(eval, {slot, Slot, 0}, {undefined, Code, #{}}, 10000, true).

%% A reference used from a callback of a request on the object's own context is nested in that request
%% (PROTOCOL.md §3.4): served at once, not queued behind the request that waits for the callback.
ref_op_from_callback_on_same_context(_) ->
	{ok, Ctx} = py_context:new(#{mode => worker}),
	{ok, Ref} = py:call(Ctx, builtins, list, [[1, 2, 3]], #{return => ref}),
	ok = py:register_function(ref_len_cb, fun([]) -> py:call_method(Ref, '__len__', []) end),
	{ok, {<<"ok">>, 3}} = py_context:eval(Ctx, <<"erlang.call('ref_len_cb')">>, #{}, 5000),
	ok = py:unregister_function(ref_len_cb),
	ok = py_context:stop(Ctx).

%% A module whose objects can be counted while they live (weak references).
tracker_module(Config) ->
	Dir = filename:join(?config(priv_dir, Config), "py_ref_tracker"),
	ok = filelib:ensure_path(Dir),
	ok = file:write_file(filename:join(Dir, "hx2_track.py"), <<"import weakref\n"
		"_refs = []\n"
		"class Tracked:\n"
		"    pass\n"
		"def make():\n"
		"    t = Tracked()\n"
		"    _refs.append(weakref.ref(t))\n"
		"    return t\n"
		"def alive():\n"
		"    return sum(1 for r in _refs if r() is not None)\n">>),
	py_import:add_path(Dir).
