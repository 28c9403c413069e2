%% PropEr properties of the codecs, through the real port (issue 7): generated terms go to Python and
%% back and must equal what PROTOCOL.md §2 says (model/1 is that table written as a function); and
%% py_msgpack's encode/decode round-trip on the Erlang side. Runs over the codec py_ct_helper picks
%% (EP_TEST_CODEC), so tools/test.sh checks both. PropEr is Debian's erlang-proper, found in the OTP
%% lib dir (no hex dependency).
-module(py_codec_prop_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("proper/include/proper.hrl").

-export([all/0, init_per_suite/1, end_per_suite/1]).
-export([round_trip_through_python/1, round_trip_as_call_argument/1, msgpack_round_trip/1,
	model_is_the_documented_table/1, improper_lists_refused/1]).

%% Each property checks this many generated terms; a term is sent to the port once per check.
-define(NUMTESTS, 300).

all() ->
	[model_is_the_documented_table, round_trip_through_python, round_trip_as_call_argument,
	 msgpack_round_trip, improper_lists_refused].

init_per_suite(Config) ->
	ok = py_ct_helper:start_app([]),
	Config.

end_per_suite(_Config) ->
	py_ct_helper:stop_app().

%% The model itself against the rows of §2 it encodes (so a wrong model cannot make the properties
%% pass by agreeing with a wrong port).
model_is_the_documented_table(_) ->
	Big = 1 bsl 70,
	Pid = self(),
	Ref = make_ref(),
	Cases = [
		{1, 1}, {-(1 bsl 63), -(1 bsl 63)}, {(1 bsl 63) - 1, (1 bsl 63) - 1},
		{1 bsl 63, "9223372036854775808"}, {Big, integer_to_list(Big)}, {-Big, integer_to_list(-Big)},
		{1.0, 1.0}, {<<"é"/utf8>>, <<"é"/utf8>>}, {<<255>>, <<255>>}, {{bytes, <<"x">>}, <<"x">>},
		{true, true}, {false, false}, {none, none}, {nil, none}, {undefined, none}, {nan, nan},
		{infinity, infinity}, {neg_infinity, neg_infinity}, {hello, <<"hello">>},
		{"abc", "abc"}, {[a, {b}], [<<"a">>, {<<"b">>}]}, {#{a => nil}, #{<<"a">> => none}},
		{Pid, Pid}, {Ref, Ref}
	],
	_ = [{T, Expected} = {T, model(T)} || {T, Expected} <- Cases],
	ok.

%% py:eval("v", #{v => T}) gives back model(T).
round_trip_through_python(_) ->
	Prop = ?FORALL(T, value(),
		?WHENFAIL(ct:pal("sent ~tp~ngot ~tp~nexpected ~tp", [T, eval_v(T), {ok, model(T)}]),
			equal(eval_v(T), {ok, model(T)}))),
	true = proper:quickcheck(Prop, [{numtests, ?NUMTESTS}, {to_file, user}]).

%% The same values as arguments of a call and elements of its result (a list built by Python).
round_trip_as_call_argument(_) ->
	Prop = ?FORALL(L, list(value()),
		begin
			Got = py:call(builtins, list, [L]),
			?WHENFAIL(ct:pal("sent ~tp~ngot ~tp", [L, Got]), equal(Got, {ok, [model(T) || T <- L]}))
		end),
	true = proper:quickcheck(Prop, [{numtests, ?NUMTESTS div 3}, {to_file, user}]).

%% py_msgpack:decode(py_msgpack:encode(T)) =:= T on the Erlang side, for every term the generator
%% makes (nil stays nil: only none is msgpack nil).
msgpack_round_trip(_) ->
	Prop = ?FORALL(T, value(),
		begin
			Bin = iolist_to_binary(py_msgpack:encode(T)),
			equal(py_msgpack:decode(Bin), T)
		end),
	true = proper:quickcheck(Prop, [{numtests, 1000}, {to_file, user}]).

%% An improper list anywhere in a request: {error, {badarg, improper_list}} in both codecs.
improper_lists_refused(_) ->
	Prop = ?FORALL({T, Path}, {value(), list(range(0, 3))},
		equal(eval_v(plant_improper(T, Path)), {error, {badarg, improper_list}})),
	true = proper:quickcheck(Prop, [{numtests, 100}, {to_file, user}]),
	{ok, 2} = py:eval(<<"1+1">>).

%% Internal.

eval_v(T) ->
	py:eval(<<"v">>, #{v => T}).

%% PROTOCOL.md §2, Erlang -> Python -> Erlang: what a term sent to Python comes back as.
model(I) when is_integer(I), I >= -(1 bsl 63), I < (1 bsl 63) -> I;
model(I) when is_integer(I) -> integer_to_list(I);  % int beyond int64: the charlist of its digits
model(F) when is_float(F) -> F;
model(B) when is_binary(B) -> B;                     % str or bytes in Python, a binary again
model({bytes, B}) when is_binary(B) -> B;
model(A) when A =:= true; A =:= false -> A;
model(A) when A =:= none; A =:= nil; A =:= undefined -> none;
model(A) when A =:= nan; A =:= infinity; A =:= neg_infinity -> A;  % floats, written back as these
model(A) when is_atom(A) -> atom_to_binary(A, utf8);  % other atoms are str
model(L) when is_list(L) -> [model(E) || E <- L];
model(T) when is_tuple(T) -> list_to_tuple([model(E) || E <- tuple_to_list(T)]);
model(M) when is_map(M) -> maps:from_list([{model(K), model(V)} || {K, V} <- maps:to_list(M)]);
model(P) when is_pid(P); is_reference(P) -> P.

%% Exact equality: 1 =/= 1.0, so a float that came back as an integer fails.
equal(A, B) -> A =:= B.

%% Replaces the element found by following Path (list/tuple/map-value indices) with an improper
%% list, or wraps T in one.
plant_improper(T, []) -> [T | tail];
plant_improper(L, [I | Rest]) when is_list(L), L =/= [] ->
	N = I rem length(L) + 1,
	lists:sublist(L, N - 1) ++ [plant_improper(lists:nth(N, L), Rest)] ++ lists:nthtail(N, L);
plant_improper(T, [I | Rest]) when is_tuple(T), tuple_size(T) > 0 ->
	N = I rem tuple_size(T) + 1,
	setelement(N, T, plant_improper(element(N, T), Rest));
plant_improper(T, _) -> [T | tail].

%% Generators: every row of §2's Erlang column, nested.

value() ->
	?SIZED(S, value(S)).

value(S) when S =< 1 ->
	scalar();
value(S) ->
	Inner = S div 4,
	frequency([
		{6, scalar()},
		{1, ?LAZY(list(value(Inner)))},
		{1, ?LAZY(?LET(L, list(value(Inner)), list_to_tuple(L)))},
		{1, ?LAZY(map_of(value(Inner)))}
	]).

scalar() ->
	oneof([
		integer(), int64(), bignum(), float(), binary(), utf8_binary(), charlist(),
		{bytes, binary()}, oneof(atoms()), self(), make_ref()
	]).

int64() ->
	integer(-(1 bsl 63), (1 bsl 63) - 1).

bignum() ->
	?LET({Sign, Bits, Low}, {oneof([1, -1]), integer(63, 300), non_neg_integer()},
		Sign * ((1 bsl Bits) + Low)).

utf8_binary() ->
	?LET(Cs, list(oneof([range($a, $z), range(16#e0, 16#ff), range(16#4e00, 16#4e40), 16#1f600])),
		unicode:characters_to_binary(Cs)).

charlist() ->
	list(range(0, 255)).

%% The fixed atoms of §2 plus a few ordinary ones (all exist: the suite names them).
atoms() ->
	[true, false, none, nil, undefined, nan, infinity, neg_infinity, ok, error, hello, 'héllo'].

%% Map keys Python can hash and that stay distinct there: ints, binaries, ordinary atoms (no bools,
%% None or floats, which equal 1/0 or each other in Python). Keys that meet in Python (hello and
%% <<"hello">>) are dropped, keeping one.
map_of(Value) ->
	?LET(KVs, list({oneof([int64(), binary(), utf8_binary(), oneof([ok, error, hello, 'héllo'])]), Value}),
		dedupe(KVs, #{}, #{})).

dedupe([], _Seen, Acc) ->
	Acc;
dedupe([{K, V} | Rest], Seen, Acc) ->
	case maps:is_key(model(K), Seen) of
		true -> dedupe(Rest, Seen, Acc);
		false -> dedupe(Rest, Seen#{model(K) => true}, Acc#{K => V})
	end.
