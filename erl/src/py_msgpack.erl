%% The msgpack body codec (protocol/PROTOCOL.md §1.2).
%%
%% Scope: encode/1 and decode/1 between one Erlang term and one msgpack object, with the extension
%% types of the protocol: 1 atom (UTF-8 name), 2 tuple (an array of the elements), 3 opaque term (pid,
%% reference, port, fun: its term_to_binary bytes, written with minor_version 2 so they are the bytes the
%% ETF codec carries for the same term), 4 integer outside int64/uint64 (signed decimal).
%%
%% Every value is written in its smallest msgpack form (fixint before uint8, fixstr before str8, fixext
%% before ext8, ...), the same choices the C++ encoder makes, so both produce identical bytes for the
%% vectors marked msgpack_exact. A binary is a msgpack str when it is valid UTF-8 and a bin otherwise.
%% `none` is nil and nil decodes to `none`.
%%
%% Decoding never creates atoms: an ext 1 naming an atom that does not exist yet stays a binary, the way
%% the rest of the application treats names coming from Python.
-module(py_msgpack).

%% API.
-export([encode/1]).
-export([decode/1]).

-define(EXT_ATOM, 1).
-define(EXT_TUPLE, 2).
-define(EXT_TERM, 3).
-define(EXT_BIGINT, 4).

%% API.

%% Encodes Term as one msgpack object. Raises error({badarg, improper_list}) for an improper list.
-spec encode(term()) -> iodata().
encode(Term) ->
	enc(Term).

%% Decodes one msgpack object that fills Bin exactly. Raises error({badarg, Why}) on malformed input.
-spec decode(binary()) -> term().
decode(Bin) when is_binary(Bin) ->
	case dec(Bin) of
		{Term, <<>>} -> Term;
		{_, Rest} -> error({badarg, {trailing_bytes, byte_size(Rest)}})
	end.

%% Internal: encoding.

enc(true) -> <<16#c3>>;
enc(false) -> <<16#c2>>;
enc(none) -> <<16#c0>>;
enc(I) when is_integer(I) -> enc_int(I);
enc(F) when is_float(F) -> <<16#cb, F:64/float>>;
enc(B) when is_binary(B) ->
	case is_utf8(B) of
		true -> [str_header(byte_size(B)), B];
		false -> [bin_header(byte_size(B)), B]
	end;
enc(A) when is_atom(A) ->
	ext(?EXT_ATOM, atom_to_binary(A, utf8));
enc(L) when is_list(L) ->
	enc_list(L, 0, []);
enc(T) when is_tuple(T) ->
	Elems = tuple_to_list(T),
	ext(?EXT_TUPLE, iolist_to_binary([array_header(length(Elems)), [enc(E) || E <- Elems]]));
enc(M) when is_map(M) ->
	[map_header(map_size(M)), maps:fold(fun(K, V, Acc) -> [Acc, enc(K), enc(V)] end, [], M)];
enc(T) when is_pid(T); is_reference(T); is_port(T); is_function(T) ->
	ext(?EXT_TERM, term_to_binary(T, [{minor_version, 2}]));
enc(B) when is_bitstring(B) ->
	error({badarg, bitstring}).

enc_list([], N, Acc) ->
	[array_header(N), lists:reverse(Acc)];
enc_list([H | T], N, Acc) ->
	enc_list(T, N + 1, [enc(H) | Acc]);
enc_list(_, _, _) ->
	error({badarg, improper_list}).

enc_int(I) when I >= 0, I =< 16#7f -> <<I>>;
enc_int(I) when I >= 0, I =< 16#ff -> <<16#cc, I>>;
enc_int(I) when I >= 0, I =< 16#ffff -> <<16#cd, I:16>>;
enc_int(I) when I >= 0, I =< 16#ffffffff -> <<16#ce, I:32>>;
enc_int(I) when I >= 0, I =< 16#ffffffffffffffff -> <<16#cf, I:64>>;
enc_int(I) when I < 0, I >= -32 -> <<I:8/signed>>;
enc_int(I) when I < 0, I >= -16#80 -> <<16#d0, I:8/signed>>;
enc_int(I) when I < 0, I >= -16#8000 -> <<16#d1, I:16/signed>>;
enc_int(I) when I < 0, I >= -16#80000000 -> <<16#d2, I:32/signed>>;
enc_int(I) when I < 0, I >= -16#8000000000000000 -> <<16#d3, I:64/signed>>;
enc_int(I) -> ext(?EXT_BIGINT, integer_to_binary(I)).

str_header(N) when N =< 31 -> <<(16#a0 bor N)>>;
str_header(N) when N =< 16#ff -> <<16#d9, N>>;
str_header(N) when N =< 16#ffff -> <<16#da, N:16>>;
str_header(N) -> <<16#db, N:32>>.

bin_header(N) when N =< 16#ff -> <<16#c4, N>>;
bin_header(N) when N =< 16#ffff -> <<16#c5, N:16>>;
bin_header(N) -> <<16#c6, N:32>>.

array_header(N) when N =< 15 -> <<(16#90 bor N)>>;
array_header(N) when N =< 16#ffff -> <<16#dc, N:16>>;
array_header(N) -> <<16#dd, N:32>>.

map_header(N) when N =< 15 -> <<(16#80 bor N)>>;
map_header(N) when N =< 16#ffff -> <<16#de, N:16>>;
map_header(N) -> <<16#df, N:32>>.

ext(Type, Data) ->
	[ext_header(Type, byte_size(Data)), Data].

ext_header(Type, 1) -> <<16#d4, Type>>;
ext_header(Type, 2) -> <<16#d5, Type>>;
ext_header(Type, 4) -> <<16#d6, Type>>;
ext_header(Type, 8) -> <<16#d7, Type>>;
ext_header(Type, 16) -> <<16#d8, Type>>;
ext_header(Type, N) when N =< 16#ff -> <<16#c7, N, Type>>;
ext_header(Type, N) when N =< 16#ffff -> <<16#c8, N:16, Type>>;
ext_header(Type, N) -> <<16#c9, N:32, Type>>.

%% unicode:characters_to_binary/1 validates a binary in C and returns it unchanged when it is valid
%% UTF-8 (an error or incomplete tuple otherwise). Lone surrogates and overlong forms are invalid, as
%% in Python's strict UTF-8 codec.
is_utf8(<<>>) ->
	true;
is_utf8(B) ->
	case unicode:characters_to_binary(B) of
		B -> true;
		_ -> false
	end.

%% Internal: decoding.

dec(<<I, R/binary>>) when I =< 16#7f -> {I, R};
dec(<<2#1000:4, N:4, R/binary>>) -> dec_map(N, R);
dec(<<2#1001:4, N:4, R/binary>>) -> dec_array(N, R);
dec(<<2#101:3, N:5, R/binary>>) -> take_str(N, R);
dec(<<16#c0, R/binary>>) -> {none, R};
dec(<<16#c2, R/binary>>) -> {false, R};
dec(<<16#c3, R/binary>>) -> {true, R};
dec(<<16#c4, N, R/binary>>) -> take_bin(N, R);
dec(<<16#c5, N:16, R/binary>>) -> take_bin(N, R);
dec(<<16#c6, N:32, R/binary>>) -> take_bin(N, R);
dec(<<16#c7, N, T, R/binary>>) -> dec_ext(T, N, R);
dec(<<16#c8, N:16, T, R/binary>>) -> dec_ext(T, N, R);
dec(<<16#c9, N:32, T, R/binary>>) -> dec_ext(T, N, R);
dec(<<16#ca, F:4/binary, R/binary>>) -> {dec_float(F), R};
dec(<<16#cb, F:8/binary, R/binary>>) -> {dec_float(F), R};
dec(<<16#cc, I, R/binary>>) -> {I, R};
dec(<<16#cd, I:16, R/binary>>) -> {I, R};
dec(<<16#ce, I:32, R/binary>>) -> {I, R};
dec(<<16#cf, I:64, R/binary>>) -> {I, R};
dec(<<16#d0, I:8/signed, R/binary>>) -> {I, R};
dec(<<16#d1, I:16/signed, R/binary>>) -> {I, R};
dec(<<16#d2, I:32/signed, R/binary>>) -> {I, R};
dec(<<16#d3, I:64/signed, R/binary>>) -> {I, R};
dec(<<16#d4, T, R/binary>>) -> dec_ext(T, 1, R);
dec(<<16#d5, T, R/binary>>) -> dec_ext(T, 2, R);
dec(<<16#d6, T, R/binary>>) -> dec_ext(T, 4, R);
dec(<<16#d7, T, R/binary>>) -> dec_ext(T, 8, R);
dec(<<16#d8, T, R/binary>>) -> dec_ext(T, 16, R);
dec(<<16#d9, N, R/binary>>) -> take_str(N, R);
dec(<<16#da, N:16, R/binary>>) -> take_str(N, R);
dec(<<16#db, N:32, R/binary>>) -> take_str(N, R);
dec(<<16#dc, N:16, R/binary>>) -> dec_array(N, R);
dec(<<16#dd, N:32, R/binary>>) -> dec_array(N, R);
dec(<<16#de, N:16, R/binary>>) -> dec_map(N, R);
dec(<<16#df, N:32, R/binary>>) -> dec_map(N, R);
dec(<<I:8/signed, R/binary>>) when I >= -32 -> {I, R};
dec(<<16#c1, _/binary>>) -> error({badarg, {reserved_byte, 16#c1}});
dec(<<>>) -> error({badarg, truncated});
dec(<<B, _/binary>>) -> error({badarg, {truncated, B}}).

take_str(N, R) ->
	case R of
		<<S:N/binary, Rest/binary>> -> {S, Rest};
		_ -> error({badarg, truncated})
	end.

take_bin(N, R) ->
	take_str(N, R).

%% Erlang has no NaN or infinite floats: those arrive as the atoms of PROTOCOL.md §2 when the encoder
%% follows the protocol, and are mapped the same way when a raw float64/float32 carries them.
dec_float(<<F:64/float>>) -> F;
dec_float(<<F:32/float>>) -> F;
dec_float(<<_:1, 2#11111111111:11, 0:52>> = B) -> infinity_sign(B);
dec_float(<<_:1, 2#11111111:8, 0:23>> = B) -> infinity_sign(B);
dec_float(_) -> nan.

infinity_sign(<<0:1, _/bitstring>>) -> infinity;
infinity_sign(<<1:1, _/bitstring>>) -> neg_infinity.

dec_array(N, R) ->
	dec_array(N, R, []).

dec_array(0, R, Acc) ->
	{lists:reverse(Acc), R};
dec_array(N, R0, Acc) ->
	{V, R} = dec(R0),
	dec_array(N - 1, R, [V | Acc]).

dec_map(N, R) ->
	dec_map(N, R, []).

dec_map(0, R, Acc) ->
	{maps:from_list(Acc), R};
dec_map(N, R0, Acc) ->
	{K, R1} = dec(R0),
	{V, R} = dec(R1),
	dec_map(N - 1, R, [{K, V} | Acc]).

dec_ext(Type, N, R) ->
	case R of
		<<Data:N/binary, Rest/binary>> -> {dec_ext(Type, Data), Rest};
		_ -> error({badarg, truncated})
	end.

dec_ext(?EXT_ATOM, Name) ->
	try binary_to_existing_atom(Name, utf8)
	catch error:badarg -> Name
	end;
dec_ext(?EXT_TUPLE, Data) ->
	case dec(Data) of
		{Elems, <<>>} when is_list(Elems) -> list_to_tuple(Elems);
		_ -> error({badarg, bad_tuple_ext})
	end;
dec_ext(?EXT_TERM, Data) ->
	binary_to_term(Data, [safe]);
dec_ext(?EXT_BIGINT, Digits) ->
	binary_to_integer(Digits);
dec_ext(Type, _) ->
	error({badarg, {unknown_ext, Type}}).
