%% Channels: Erlang terms streamed to Python (`from erlang.channel import Channel`).
%%
%% Scope: the public API; py_chan does the work (PROTOCOL.md §3.11). A channel lives in one port: the
%% creating process's place (the port its own py:call requests go to), or the port of Opts'
%% `context => Pid` / `slot => N`. Pass the handle to Python as an argument of a py:call that runs in
%% that port; in another port `Channel(ref)` raises ChannelClosed naming why. The channel is freed when
%% its creator exits; a port restart closes it (send answers {error, closed}).
-module(py_channel).

-export([new/0]).
-export([new/1]).
-export([send/2]).
-export([close/1]).
-export([info/1]).
-export([register_callbacks/0]).

-export_type([channel/0]).
-export_type([opts/0]).

-type channel() :: reference().
%% max_size: bytes of encoded messages queued in the port before send/2 answers busy (0: unbounded).
-type opts() :: #{max_size => non_neg_integer(), context => pid(), slot => pos_integer()}.

%% An unbounded channel.
-spec new() -> {ok, channel()} | {error, term()}.
new() ->
	new(#{}).

-spec new(opts()) -> {ok, channel()} | {error, term()}.
new(Opts) when is_map(Opts) ->
	case maps:get(max_size, Opts, 0) of
		Max when is_integer(Max), Max >= 0 -> py_chan:new(channel, Max, 0, Opts);
		Bad -> {error, {badarg, {max_size, Bad}}}
	end.

%% Queues Term (encoded with the port's codec) for Python. Never blocks: busy when the port's queue
%% holds max_size bytes or more (the message is not sent; retry later).
-spec send(channel(), term()) -> ok | busy | {error, term()}.
send(Ch, Term) ->
	py_chan:send_term(Ch, Term).

%% No more messages: Python readers get what is queued, then ChannelClosed (iteration ends).
-spec close(channel()) -> ok.
close(Ch) ->
	py_chan:close(Ch).

%% #{size => queued bytes (as the port last reported), max_size => N (0: unbounded), closed => boolean()}.
-spec info(channel()) -> map().
info(Ch) ->
	py_chan:info(Ch).

%% Kept for the reference API: there is nothing to register (Python reads the port's queue directly).
-spec register_callbacks() -> ok.
register_callbacks() ->
	ok.
