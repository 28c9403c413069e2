%% The wire: bad frames get a protocol_error naming the problem and the port goes on; the golden
%% vectors hold on the Erlang side and through the real port, in both codecs; the msgpack port passes
%% the basic API cases.
-module(py_protocol_SUITE).

-include_lib("common_test/include/ct.hrl").

-export([all/0, groups/0, init_per_suite/1, end_per_suite/1, init_per_group/2, end_per_group/2]).
-export([vectors_erlang_side/1, msgpack_codec_unit/1, garbage_body/1, too_short/1, unknown_kind/1,
	unknown_context/1, bad_flags/1, bad_shape/1, wrong_codec_body/1, compressed_etf/1,
	random_frames/1, vectors_through_port/1, vectors_converted/1, basic_api/1, oversized_frame/1]).

all() ->
	[vectors_erlang_side, msgpack_codec_unit, {group, etf}, {group, msgpack}, {group, small_frames}].

groups() ->
	Wire = [garbage_body, too_short, unknown_kind, unknown_context, bad_flags, bad_shape,
		wrong_codec_body, random_frames, vectors_through_port, vectors_converted, basic_api],
	[{etf, [], [compressed_etf | Wire]}, {msgpack, [], Wire}, {small_frames, [], [oversized_frame]}].

init_per_suite(Config) ->
	%% protocol/vectors of the source tree: next to this suite's source, or above the _build tree.
	Candidates = [filename:join([filename:dirname(?FILE), "..", "..", "protocol", "vectors"]),
		filename:join([code:lib_dir(erlang_python), "..", "..", "..", "..", "protocol", "vectors"])],
	[VectorDir | _] = [D || D <- Candidates, filelib:is_file(filename:join(D, "MANIFEST"))],
	[{vectors, load_vectors(VectorDir)} | Config].

end_per_suite(_Config) ->
	ok.

init_per_group(small_frames, Config) ->
	ok = py_ct_helper:start_app([{num_ports, 1}, {contexts_per_port, 2}, {max_frame, 65536}]),
	Config;
init_per_group(Codec, Config) ->
	ok = py_ct_helper:start_app([{num_ports, 1}, {contexts_per_port, 2}, {codec, Codec}]),
	[{codec, Codec} | Config].

end_per_group(_, _Config) ->
	py_ct_helper:stop_app().

%% term_to_binary and py_msgpack:encode give the golden files, and both files decode to the term.
vectors_erlang_side(Config) ->
	Vectors = ?config(vectors, Config),
	true = length(Vectors) >= 30,
	_ = [begin
		{Name, Etf} = {Name, term_to_binary(Term, [{minor_version, 2}])},
		{Name, Msgpack} = {Name, iolist_to_binary(py_msgpack:encode(Term))},
		{Name, Term} = {Name, binary_to_term(Etf)},
		{Name, Term} = {Name, py_msgpack:decode(Msgpack)}
	end || {Name, Term, _Flags, Etf, Msgpack} <- Vectors],
	ok.

%% The msgpack codec: every encoding boundary, and decoding what the Erlang encoder never writes.
msgpack_codec_unit(_) ->
	Cases = [
		{0, <<0>>}, {127, <<127>>}, {128, <<16#cc, 128>>}, {256, <<16#cd, 1, 0>>},
		{65536, <<16#ce, 0, 1, 0, 0>>}, {1 bsl 32, <<16#cf, 1:32, 0:32>>}, {-1, <<16#ff>>},
		{-32, <<16#e0>>}, {-33, <<16#d0, -33:8/signed>>}, {-129, <<16#d1, -129:16/signed>>},
		{-32769, <<16#d2, -32769:32/signed>>}, {-(1 bsl 31) - 1, <<16#d3, (-(1 bsl 31) - 1):64/signed>>},
		{1 bsl 64, <<16#c7, 20, 4, "18446744073709551616">>}, {-(1 bsl 63) - 1, <<16#c7, 20, 4, "-9223372036854775809">>},
		{1.5, <<16#cb, 1.5/float>>}, {none, <<16#c0>>}, {true, <<16#c3>>}, {false, <<16#c2>>},
		{<<"a">>, <<16#a1, "a">>}, {<<255>>, <<16#c4, 1, 255>>}, {ok, <<16#d5, 1, "ok">>},
		{{}, <<16#d4, 2, 16#90>>}, {[], <<16#90>>}, {#{}, <<16#80>>},
		{{1, 2}, <<16#c7, 3, 2, 16#92, 1, 2>>}, {{1, 2, 3}, <<16#d6, 2, 16#93, 1, 2, 3>>}
	],
	_ = [{T, B} = {T, iolist_to_binary(py_msgpack:encode(T))} || {T, B} <- Cases],
	_ = [{T, T} = {T, py_msgpack:decode(B)} || {T, B} <- Cases],
	%% float32, NaN/inf floats, str8 and nil from another encoder
	1.5 = py_msgpack:decode(<<16#ca, 1.5:32/float>>),
	nan = py_msgpack:decode(<<16#cb, 16#7ff8000000000000:64>>),
	infinity = py_msgpack:decode(<<16#cb, 16#7ff0000000000000:64>>),
	neg_infinity = py_msgpack:decode(<<16#cb, 16#fff0000000000000:64>>),
	<<"ab">> = py_msgpack:decode(<<16#d9, 2, "ab">>),
	%% an ext 1 naming no existing atom stays a binary
	Name = <<"no_such_atom_", (integer_to_binary(erlang:unique_integer([positive])))/binary>>,
	Name = py_msgpack:decode(iolist_to_binary([16#c7, byte_size(Name), 1, Name])),
	{'EXIT', {{badarg, improper_list}, _}} = (catch py_msgpack:encode([1 | 2])),
	{'EXIT', {{badarg, _}, _}} = (catch py_msgpack:decode(<<16#92, 1>>)),
	{'EXIT', {{badarg, _}, _}} = (catch py_msgpack:decode(<<1, 2>>)),
	{'EXIT', {{badarg, _}, _}} = (catch py_msgpack:decode(<<16#c1>>)),
	ok.

%% A body that is not a term: bad_body, with the request's id.
garbage_body(Config) ->
	{protocol_error, bad_body, Detail} = raw(Config, 2, ctx(), 0, <<"garbage!">>),
	true = is_binary(Detail) andalso Detail =/= <<>>,
	serving(Config).

%% A frame shorter than its header: too_short (id 0, so the owner logs it).
too_short(Config) ->
	ok = py_ct_helper:capture_log(),
	try
		#{port := Port} = py_port:info(1),
		true = port_command(Port, <<1, 2, 3, 4, 5>>),
		receive_log(<<"too_short">>)
	after
		py_ct_helper:stop_capture_log()
	end,
	serving(Config).

%% An unknown kind: unknown_kind.
unknown_kind(Config) ->
	{protocol_error, unknown_kind, _} = raw(Config, 200, ctx(), 0, body(Config, [])),
	serving(Config).

%% A context the port does not have: unknown_context.
unknown_context(Config) ->
	{protocol_error, unknown_context, _} =
		raw(Config, 2, 9999, 0, body(Config, {undefined, <<"1">>, #{}})),
	serving(Config).

%% A reserved flag bit: bad_flags (bit 0, nested, is valid on eval: py_port_contexts_SUITE; bit 1,
%% shm, too: py_shm_SUITE).
bad_flags(Config) ->
	{protocol_error, bad_flags, _} = raw(Config, 2, ctx(), 4, body(Config, {undefined, <<"1">>, #{}})),
	serving(Config).

%% A valid term of the wrong shape: bad_shape.
bad_shape(Config) ->
	{protocol_error, bad_shape, _} = raw(Config, 2, ctx(), 0, body(Config, {1, 2})),
	{protocol_error, bad_shape, _} = raw(Config, 1, ctx(), 0, body(Config, {undefined, math, sqrt, not_a_list, #{}})),
	serving(Config).

%% A body in the other codec is refused (bad_body, or bad_shape if it happens to parse).
wrong_codec_body(Config) ->
	Other = case ?config(codec, Config) of etf -> msgpack; msgpack -> etf end,
	{protocol_error, Reason, _} = raw(Config, 2, ctx(), 0,
		iolist_to_binary(py_codec:encode(Other, {undefined, <<"1+1">>, #{}}))),
	true = lists:member(Reason, [bad_body, bad_shape]),
	serving(Config).

%% Compressed ETF (tag 80) is refused.
compressed_etf(Config) ->
	Body = term_to_binary({undefined, binary:copy(<<"1">>, 1000), #{}}, [compressed]),
	<<131, 80, _/binary>> = Body,
	{protocol_error, bad_body, _} = raw(Config, 2, ctx(), 0, Body),
	serving(Config).

%% 1000 random frames: each is answered with an error or protocol_error or not at all; the port
%% neither dies nor stops serving.
random_frames(Config) ->
	OsPid = py_ct_helper:os_pid(1),
	#{port := Port} = py_port:info(1),
	rand:seed(exsss, {1, 2, 3}),
	Kinds = [1, 2, 3, 4, 5, 6, 9, 10, 11, 12, 63, 64, 65, 100, 255],
	_ = [begin
		Id = (1 bsl 48) + erlang:unique_integer([positive]),
		true = ets:insert(py_inflight, {Id, self(), 1}),
		Frame = case rand:uniform(10) of
			1 -> crypto:strong_rand_bytes(rand:uniform(16) - 1);
			_ ->
				Kind = lists:nth(rand:uniform(length(Kinds)), Kinds),
				Flags = case rand:uniform(8) of 1 -> rand:uniform(255); _ -> 0 end,
				Ctx = rand:uniform(4) - 1,
				[<<Kind, Flags, 0:16, Ctx:32, Id:64>>, crypto:strong_rand_bytes(rand:uniform(64) - 1)]
		end,
		true = port_command(Port, Frame)
	end || _ <- lists:seq(1, 1000)],
	{ok, 4} = py:eval(<<"2+2">>),
	Kinds2 = drain([]),
	true = lists:all(fun(K) -> lists:member(K, [65, 66, 70]) end, Kinds2),
	true = length(Kinds2) > 100,
	_ = ets:match_delete(py_inflight, {'_', self(), '_'}),
	OsPid = py_ct_helper:os_pid(1),
	serving(Config).

%% Through the real port: eval of `x` with x = the vector's term answers with exactly the golden
%% bytes, for every vector marked exact for this codec.
vectors_through_port(Config) ->
	Codec = ?config(codec, Config),
	Flag = case Codec of etf -> etf_exact; msgpack -> msgpack_exact end,
	Exact = [V || V = {_, _, Flags, _, _} <- ?config(vectors, Config), lists:member(Flag, Flags)],
	true = length(Exact) >= 20,
	Failures = [{Name, Got} || {Name, Term, _, Etf, Msgpack} <- Exact,
		Golden <- [case Codec of etf -> Etf; msgpack -> Msgpack end],
		Got <- [raw_result(Config, Term)],
		Got =/= Golden],
	[] = Failures.

%% Every vector, exact or not, comes back from Python as the conversion rules (PROTOCOL.md §2) say.
vectors_converted(Config) ->
	Failures = [{Name, Term, Got} || {Name, Term, _, _, _} <- ?config(vectors, Config),
		Got <- [py:eval(<<"x">>, #{x => Term})],
		Got =/= {ok, model(Term)}],
	[] = Failures.

%% The basic API cases pass over this codec.
basic_api(Config) ->
	Codec = ?config(codec, Config),
	[#{codec := Codec}] = py:stats(),
	{ok, 4.0} = py:call(math, sqrt, [16]),
	{ok, <<"{\"a\": 1}">>} = py:call(json, dumps, [#{a => 1}], #{sort_keys => true}),
	{ok, 25} = py:eval(<<"x * y">>, #{x => 5, y => 5}),
	{ok, 2} = py:eval("1 + 1"),
	ok = py:exec(<<"def twice(v):\n    return v * 2\n">>),
	{ok, 42} = py:call('__main__', twice, [21]),
	{error, {'NameError', "name 'nope' is not defined"}} = py:eval(<<"nope">>),
	{error, {'ZeroDivisionError', "division by zero"}} = py:eval(<<"1/0">>),
	{ok, "123456789012345678901234567890"} = py:eval(<<"123456789012345678901234567890">>),
	{ok, [nan, infinity, neg_infinity]} = py:eval(<<"[float('nan'), float('inf'), float('-inf')]">>),
	{ok, <<255, 254>>} = py:eval(<<"b'\\xff\\xfe'">>),
	{ok, P} = py:eval(<<"p">>, #{p => self()}),
	true = P =:= self(),
	{ok, #{<<"k">> := {1, <<"v">>}}} = py:eval(<<"{'k': (1, 'v')}">>),
	ok = py:register_function(basic_api_add, fun([A, B]) -> A + B end),
	{ok, 30} = py:eval(<<"__import__('erlang').basic_api_add(10, 20)">>),
	ok = py:cast(erlang, send, [self(), {done, <<"task1">>}]),
	receive {<<"done">>, <<"task1">>} -> ok after 10000 -> error(no_message) end,
	Ref = py:spawn_call(math, factorial, [5]),
	{ok, 120} = py:await(Ref),
	{error, timeout} = py:eval(<<"while True:\n    pass\n">>, #{}, 100),
	{ok, 2} = py:eval(<<"1+1">>).

%% Internal.

load_vectors(Dir) ->
	{ok, Entries} = file:consult(filename:join(Dir, "terms.eterm")),
	{ok, Manifest} = file:read_file(filename:join(Dir, "MANIFEST")),
	Lines = [string:lexemes(L, " ") || L <- string:lexemes(binary_to_list(Manifest), "\n")],
	Flags = maps:from_list([{list_to_atom(N), [list_to_atom(F) || F <- Fs]} || [N | Fs] <- Lines]),
	[begin
		Base = filename:join(Dir, atom_to_list(Name)),
		{ok, Etf} = file:read_file(Base ++ ".etf"),
		{ok, Msgpack} = file:read_file(Base ++ ".msgpack"),
		#{Name := F} = Flags,
		F = F0,
		{Name, expand(Raw), F, Etf, Msgpack}
	end || {Name, Raw, F0} <- Entries].

%% The substitution of gen_vectors.escript: {'$eval', "Expr"} is the value of Expr.
expand({'$eval', Source}) ->
	{ok, Tokens, _} = erl_scan:string(Source ++ "."),
	{ok, [Expr]} = erl_parse:parse_exprs(Tokens),
	{value, Value, _} = erl_eval:expr(Expr, erl_eval:new_bindings()),
	Value;
expand(List) when is_list(List) -> [expand(E) || E <- List];
expand(Tuple) when is_tuple(Tuple) -> list_to_tuple(expand(tuple_to_list(Tuple)));
expand(Map) when is_map(Map) -> maps:from_list([{expand(K), expand(V)} || {K, V} <- maps:to_list(Map)]);
expand(Other) -> Other.

%% What a term becomes after a trip Erlang -> Python -> Erlang (PROTOCOL.md §2).
model(true) -> true;
model(false) -> false;
model(none) -> none;
model(nil) -> none;
model(undefined) -> none;
model(nan) -> nan;
model(infinity) -> infinity;
model(neg_infinity) -> neg_infinity;
model(A) when is_atom(A) -> atom_to_binary(A, utf8);
model(I) when is_integer(I), I >= -(1 bsl 63), I < (1 bsl 63) -> I;
model(I) when is_integer(I) -> integer_to_list(I);
model({bytes, B}) when is_binary(B) -> B;
model(L) when is_list(L) -> [model(E) || E <- L];
model(T) when is_tuple(T) -> list_to_tuple(model(tuple_to_list(T)));
model(M) when is_map(M) -> maps:from_list([{model(K), model(V)} || {K, V} <- maps:to_list(M)]);
model(Other) -> Other.

ctx() ->
	#{contexts := Contexts} = py_port:info(1),
	element(1, Contexts).

body(Config, Term) ->
	iolist_to_binary(py_codec:encode(?config(codec, Config), Term)).

%% Sends a raw frame to port 1 and returns its decoded protocol_error (or other final answer).
raw(Config, Kind, Ctx, Flags, Body) ->
	Id = (1 bsl 48) + erlang:unique_integer([positive]),
	true = ets:insert(py_inflight, {Id, self(), 1}),
	#{port := Port} = py_port:info(1),
	true = port_command(Port, py_ct_helper:raw_frame(Kind, Flags, Ctx, Id, Body)),
	receive
		{py_frame, Id, 70, _, Reply} ->
			{Reason, Detail} = py_codec:decode(?config(codec, Config), Reply),
			{protocol_error, Reason, Detail};
		{py_frame, Id, K, _, Reply} ->
			{unexpected, K, py_codec:decode(?config(codec, Config), Reply)}
	after 10000 ->
		_ = ets:delete(py_inflight, Id),
		no_reply
	end.

%% The raw result body of eval `x` with x = Term (no environment).
raw_result(Config, Term) ->
	Id = (1 bsl 48) + erlang:unique_integer([positive]),
	true = ets:insert(py_inflight, {Id, self(), 1}),
	#{port := Port} = py_port:info(1),
	Body = body(Config, {undefined, <<"x">>, #{<<"x">> => Term}}),
	true = port_command(Port, py_ct_helper:raw_frame(2, 0, ctx(), Id, Body)),
	receive
		{py_frame, Id, 65, _, Reply} -> Reply;
		{py_frame, Id, K, _, Reply} -> {K, py_codec:decode(?config(codec, Config), Reply)}
	after 10000 ->
		no_reply
	end.

serving(_Config) ->
	{ok, 2} = py:eval(<<"1+1">>),
	ok.

receive_log(Needle) ->
	receive
		{log, _, Text} ->
			case binary:match(Text, Needle) of
				nomatch -> receive_log(Needle);
				_ -> ok
			end
	after 10000 ->
		error({no_log, Needle})
	end.

drain(Acc) ->
	receive
		{py_frame, _, Kind, _, _} -> drain([Kind | Acc])
	after 0 ->
		Acc
	end.

%% A frame longer than max_frame is not buffered: the port skips it, answers that one request with
%% protocol_error oversized, and goes on serving (same OS process).
oversized_frame(_) ->
	#{os_pid := OsPid} = py_port:info(1),
	{error, {protocol_error, oversized, Detail}} =
		py:eval(<<"len(b)">>, #{b => {bytes, binary:copy(<<0>>, 100000)}}),
	true = binary:match(Detail, <<"exceeds max_frame (65536)">>) =/= nomatch,
	{ok, 40000} = py:eval(<<"len(b)">>, #{b => {bytes, binary:copy(<<0>>, 40000)}}),
	#{os_pid := OsPid, status := up} = py_port:info(1).
