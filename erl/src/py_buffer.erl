%% Buffers: bytes written by Erlang, read by Python as a file (`erlang.PyBuffer`), e.g. a WSGI input
%% that another process is still writing.
%%
%% Scope: the public API over py_chan (PROTOCOL.md §3.11). The bytes live in the port, contiguous and
%% kept until the buffer's owner (its creator) exits, so Python can seek back and take zero-copy
%% memoryviews. Writes are bounded by the content length given to new/1, or 1 GiB when chunked.
-module(py_buffer).

-export([new/0]).
-export([new/1]).
-export([new/2]).
-export([write/2]).
-export([close/1]).
-export([info/1]).

-export_type([buffer/0]).

-type buffer() :: reference().

%% A chunked buffer (unknown length; starts at 64 KiB and grows).
-spec new() -> {ok, buffer()} | {error, term()}.
new() ->
	new(undefined).

%% ContentLength bytes, allocated at once in the port; undefined for chunked.
-spec new(non_neg_integer() | undefined) -> {ok, buffer()} | {error, term()}.
new(ContentLength) ->
	new(ContentLength, #{}).

%% Opts: context => Pid, slot => N (which port, as py_channel:new/1).
-spec new(non_neg_integer() | undefined, map()) -> {ok, buffer()} | {error, term()}.
new(undefined, Opts) ->
	py_chan:new(buffer, 0, 0, Opts);
new(Len, Opts) when is_integer(Len), Len >= 0 ->
	py_chan:new(buffer, Len, Len, Opts);
new(Bad, _) ->
	{error, {badarg, Bad}}.

%% Appends Data; waiting Python readers wake. {error, too_large} past the content length (1 GiB chunked).
-spec write(buffer(), iodata()) -> ok | {error, term()}.
write(Buf, Data) ->
	py_chan:write(Buf, Data).

%% The end of the data: read() returns what is left, then b''.
-spec close(buffer()) -> ok.
close(Buf) ->
	py_chan:close(Buf).

%% #{size => bytes written, max_size => content length (0: chunked), closed => boolean()}.
-spec info(buffer()) -> map().
info(Buf) ->
	py_chan:info(Buf).
