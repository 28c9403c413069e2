%% Frames and bodies on the wire (protocol/PROTOCOL.md §1).
%%
%% Scope: the 16-byte header, the message kinds, and the body codecs (ETF through the VM's BIFs, msgpack
%% through py_msgpack). Pure functions; every process that talks to a port builds and reads its own
%% frames with these, the owner only looks at headers.
-module(py_codec).

%% API.
-export([frame/5]).
-export([frame/6]).
-export([encode/2]).
-export([decode/2]).
-export([kind/1]).
-export([protocol_atoms/0]).

-export_type([codec/0]).
-export_type([kind/0]).

-type codec() :: etf | msgpack.
-type kind() :: call | eval | exec | cast | cancel | callback_reply | context_create | context_destroy
	| env_drop | stats | stream_next | output_ack | context_init | drain | ref_op.

%% API.

%% One frame as iodata (the {packet, 4} length is added by the port driver).
-spec frame(kind(), non_neg_integer(), non_neg_integer(), codec(), term()) -> iodata().
frame(Kind, Ctx, Id, Codec, Body) ->
	[<<(kind(Kind)), 0, 0:16, Ctx:32, Id:64>> | encode(Codec, Body)].

%% The same with header flags (bit 0: nested, PROTOCOL.md §3.4).
-spec frame(kind(), 0..255, non_neg_integer(), non_neg_integer(), codec(), term()) -> iodata().
frame(Kind, Flags, Ctx, Id, Codec, Body) ->
	[<<(kind(Kind)), Flags, 0:16, Ctx:32, Id:64>> | encode(Codec, Body)].

-spec encode(codec(), term()) -> iodata().
encode(etf, Term) -> term_to_binary(Term, [{minor_version, 2}]);
encode(msgpack, Term) -> py_msgpack:encode(Term).

%% Decodes a body; ETF with [safe], so a body never creates atoms.
-spec decode(codec(), binary()) -> term().
decode(etf, Body) -> binary_to_term(Body, [safe]);
decode(msgpack, Body) -> py_msgpack:decode(Body).

%% The fixed atoms the port may write (PROTOCOL.md §2, §3, §4). binary_to_term(_, [safe]) refuses an
%% atom that does not exist yet; naming them here makes them exist once this module is loaded.
-spec protocol_atoms() -> [atom()].
protocol_atoms() ->
	[true, false, none, nan, infinity, neg_infinity, ok, error, undefined,
	 protocol, python, build, gil, free_threaded, modes, worker, owngil, contexts, codec, etf, msgpack,
	 os_pid, noproc, unknown_kind, unknown_context, bad_flags, bad_body, bad_shape, too_short, oversized,
	 badarg, improper_list, py_ref, envs, objects, enabled, disabled].

%% The kind byte of an E->P message (PROTOCOL.md §3).
-spec kind(kind()) -> 1..15.
kind(call) -> 1;
kind(eval) -> 2;
kind(exec) -> 3;
kind(cast) -> 4;
kind(cancel) -> 5;
kind(callback_reply) -> 6;
kind(context_create) -> 7;
kind(context_destroy) -> 8;
kind(env_drop) -> 9;
kind(stats) -> 10;
kind(stream_next) -> 11;
kind(output_ack) -> 12;
kind(context_init) -> 13;
kind(drain) -> 14;
kind(ref_op) -> 15.
