%% Byte channels: raw bytes both ways, no term encoding (`from erlang import ByteChannel`).
%%
%% Scope: the public API over py_chan (PROTOCOL.md §3.11). Erlang -> Python: send/2 (the binary is the
%% frame's body, as it is). Python -> Erlang: ByteChannel.send_bytes, read here with recv/1,2 and
%% try_receive/1. Placement, lifetime and backpressure are py_channel's.
-module(py_byte_channel).

-export([new/0]).
-export([new/1]).
-export([send/2]).
-export([recv/1]).
-export([recv/2]).
-export([try_receive/1]).
-export([close/1]).
-export([info/1]).
-export([register_callbacks/0]).

-export_type([channel/0]).
-export_type([opts/0]).

-type channel() :: reference().
%% max_size bounds both directions: bytes queued in the port (send/2 answers busy), and bytes Python
%% may have sent that Erlang has not read (send_bytes waits; 16 MiB when 0).
-type opts() :: #{max_size => non_neg_integer(), context => pid(), slot => pos_integer()}.

-spec new() -> {ok, channel()} | {error, term()}.
new() ->
	new(#{}).

-spec new(opts()) -> {ok, channel()} | {error, term()}.
new(Opts) when is_map(Opts) ->
	case maps:get(max_size, Opts, 0) of
		Max when is_integer(Max), Max >= 0 -> py_chan:new(byte_channel, Max, 0, Opts);
		Bad -> {error, {badarg, {max_size, Bad}}}
	end.

-spec send(channel(), iodata()) -> ok | busy | {error, term()}.
send(Ch, Bytes) ->
	py_chan:send_raw(Ch, Bytes).

%% Bytes from Python (recv(Ch, infinity)).
-spec recv(channel()) -> {ok, binary()} | {error, closed | term()}.
recv(Ch) ->
	recv(Ch, infinity).

-spec recv(channel(), timeout()) -> {ok, binary()} | {error, closed | timeout | term()}.
recv(Ch, Timeout) ->
	py_chan:recv(Ch, Timeout).

-spec try_receive(channel()) -> {ok, binary()} | {error, empty | closed | term()}.
try_receive(Ch) ->
	py_chan:try_receive(Ch).

%% No more bytes to Python (its readers drain, then ByteChannelClosed); Python may still send back.
-spec close(channel()) -> ok.
close(Ch) ->
	py_chan:close(Ch).

-spec info(channel()) -> map().
info(Ch) ->
	py_chan:info(Ch).

-spec register_callbacks() -> ok.
register_callbacks() ->
	ok.
