%% Erlang functions callable from Python (`erlang.call`, `erlang.<name>`, `from erlang import <name>`).
%%
%% Scope: the registry (ETS table `py_callbacks`, Name binary => fun/1 | {M, F}), the owner's builtins
%% (the `_state_*`, `_sd_*` and `_whereis` names: names starting with `_` are reserved for them and
%% cannot be registered), and the turning of one callback
%% into its callback_reply body. A registered function gets one argument, the list of the positional
%% arguments Python passed.
%%
%% A callback made while a request is being served runs in the process waiting on that request (so
%% `self()` inside the function is the caller; py_request calls reply/2). One made from a Python thread
%% that serves no request (id 0) is run by handle_async/4 in a fresh process, or by the owner itself for
%% a builtin. Only the builtins run in the owner: they are short ETS operations that never call back.
-module(py_callback).

%% API.
-export([init_tab/0]).
-export([register_function/2]).
-export([register_function/3]).
-export([register/2]).
-export([unregister_function/1]).
-export([invoke/2]).
-export([reply/2]).
-export([is_builtin/1]).
-export([reply_frame/5]).
-export([reply_frame/6]).
-export([handle_async/4]).

-export_type([name/0]).

-type name() :: atom() | binary().

-define(TAB, py_callbacks).

%% The builtins, served by builtin/2.
-define(BUILTINS, [<<"_state_get">>, <<"_state_set">>, <<"_state_delete">>, <<"_state_keys">>,
	<<"_state_incr">>, <<"_state_decr">>, <<"_sd_get">>, <<"_sd_set">>, <<"_sd_del">>, <<"_sd_keys">>,
	<<"_sd_destroy">>, <<"_whereis">>, <<"_has_function">>]).

%% API.

%% Creates the registry; called once by erlang_python_sup:init/1, whose process then owns it.
-spec init_tab() -> ok.
init_tab() ->
	?TAB = ets:new(?TAB, [set, public, named_table, {read_concurrency, true}]),
	ok.

%% Names starting with `_` are refused: they are reserved for the builtins (which run inside the
%% port's owner process, where a user function would stall every reply of the port).
-spec register_function(name(), fun((list()) -> term())) -> ok | {error, {reserved_name, binary()}}.
register_function(Name, Fun) when is_function(Fun, 1) ->
	insert(name(Name), Fun).

%% Module:Function(Args) is called with the list of arguments.
%% register/2: the name the reference docs' scheduling example uses (py_callback:register/2).
-spec register(name(), fun((list()) -> term())) -> ok | {error, {reserved_name, binary()}}.
register(Name, Fun) ->
	register_function(Name, Fun).

-spec register_function(name(), module(), atom()) -> ok | {error, {reserved_name, binary()}}.
register_function(Name, Module, Function) when is_atom(Module), is_atom(Function) ->
	insert(name(Name), {Module, Function}).

insert(<<"_", _/binary>> = Name, _) ->
	{error, {reserved_name, Name}};
insert(Name, Fun) ->
	true = ets:insert(?TAB, {Name, Fun}),
	ok.

-spec unregister_function(name()) -> ok.
unregister_function(Name) ->
	true = ets:delete(?TAB, name(Name)),
	ok.

%% Runs the function registered as Name (or the builtin Name) on Args and returns its result. Raises
%% what the function raises; error({not_registered, Name}) when nothing is registered under Name.
-spec invoke(binary(), list()) -> term().
invoke(<<"_", _/binary>> = Name, Args) ->
	builtin(Name, Args);
invoke(Name, Args) ->
	registered(Name, Args).

%% The callback_reply body (PROTOCOL.md §3) for calling Name on Args: {ok, Result} or
%% {error, Class, Reason} with Class <<"error">> | <<"throw">> | <<"exit">> and Reason a readable text.
%% Never raises.
-spec reply(binary() | atom(), term()) -> {ok, term()} | {error, binary(), binary()}.
reply(Name, Args) ->
	try
		is_list(Args) orelse error({badarg, {callback_args_not_a_list, Args}}),
		{ok, invoke(name(Name), Args)}
	catch
		error:{not_registered, Unknown} when is_binary(Unknown) ->
			{error, <<"error">>, iolist_to_binary(["no Erlang function registered as '", Unknown, "'"])};
		Class:Reason:Stack ->
			{error, atom_to_binary(Class, utf8), describe(Reason, Stack)}
	end.

%% The callback_reply frame for a call of Name(Args). A result the codec cannot encode (an improper
%% list has no msgpack form) becomes an error reply: the Python side always gets an answer.
-spec reply_frame(binary(), list(), non_neg_integer(), non_neg_integer(), py_codec:codec()) -> iodata().
reply_frame(Name, Args, Ctx, CbId, Codec) ->
	reply_frame(Name, Args, Ctx, CbId, Codec, pipe).

%% The same; with a port (bulk, PROTOCOL.md §3.12) a big reply goes through one of its shared-memory
%% regions (py_shm:callback_reply_frame/5). `pipe': always the pipe (the owner, which must not
%% spend a pwrite of the reply's size on it).
-spec reply_frame(binary(), list(), non_neg_integer(), non_neg_integer(), py_codec:codec(), port() | pipe)
	-> iodata().
reply_frame(Name, Args, Ctx, CbId, Codec, Via) ->
	Reply = reply(Name, Args),
	try
		case Via of
			pipe -> py_codec:frame(callback_reply, Ctx, CbId, Codec, Reply);
			Port -> py_shm:callback_reply_frame(Ctx, CbId, Codec, Reply, Port)
		end
	catch error:Why ->
		Text = io_lib:format("the result of ~ts cannot be sent to Python: ~ts", [Name, encode_error(Why)]),
		py_codec:frame(callback_reply, Ctx, CbId, Codec, {error, <<"error">>, unicode:characters_to_binary(Text)})
	end.

encode_error({badarg, improper_list}) -> "improper list";
encode_error({badarg, bitstring}) -> "bitstring";
encode_error(Why) -> io_lib:format("~tp", [Why]).

%% Whether Name is one of the builtins (the owner runs those itself).
-spec is_builtin(binary()) -> boolean().
is_builtin(Name) -> lists:member(Name, ?BUILTINS).

%% Serves a callback frame that came with id 0 (from a thread that serves no request): decodes it,
%% runs it in the calling process and answers on Port. The owner spawns a process for this, or calls
%% it inline for a builtin.
-spec handle_async(port(), py_codec:codec(), non_neg_integer(), binary()) -> ok.
handle_async(Port, Codec, Ctx, Body) ->
	{CbId, Name, Args} = py_codec:decode(Codec, Body),
	%% The builtins run in the owner (py_port): their replies take the pipe.
	Via = case is_binary(Name) andalso is_builtin(Name) of
		true -> pipe;
		false -> Port
	end,
	Frame = reply_frame(Name, Args, Ctx, CbId, Codec, Via),
	try port_command(Port, Frame) of
		true -> ok
	catch error:badarg ->
		%% The port died meanwhile; the thread that asked is gone with it.
		ok
	end.

%% Internal.

name(Name) when is_atom(Name) -> atom_to_binary(Name, utf8);
name(Name) when is_binary(Name) -> Name;
name(Name) when is_list(Name) -> unicode:characters_to_binary(Name).

%% The builtins the erlang package (pylib/erlang) relies on; see the contracts at the top of
%% pylib/erlang/_state.py, _shared_dict.py and _callbacks.py.
builtin(<<"_state_get">>, [Key]) ->
	case py_state:fetch(Key) of
		{ok, Value} -> {ok, Value};
		{error, not_found} -> none;
		{error, reserved_key} -> error(reserved_key)
	end;
builtin(<<"_state_set">>, [Key, Value]) -> ok_or_raise(py_state:store(Key, Value));
builtin(<<"_state_delete">>, [Key]) -> ok_or_raise(py_state:remove(Key));
builtin(<<"_state_keys">>, []) -> py_state:keys();
builtin(<<"_state_incr">>, [Key]) -> py_state:incr(Key, 1);
builtin(<<"_state_incr">>, [Key, N]) -> py_state:incr(Key, N);
builtin(<<"_state_decr">>, [Key]) -> py_state:decr(Key, 1);
builtin(<<"_state_decr">>, [Key, N]) -> py_state:decr(Key, N);
builtin(<<"_sd_get">>, [SD, Key]) -> py_shared_dict:lookup(SD, Key);
builtin(<<"_sd_set">>, [SD, Key, Value]) -> py_shared_dict:set(SD, Key, Value);
builtin(<<"_sd_del">>, [SD, Key]) -> py_shared_dict:take(SD, Key);
builtin(<<"_sd_keys">>, [SD]) -> py_shared_dict:keys(SD);
builtin(<<"_sd_destroy">>, [SD]) -> py_shared_dict:destroy(SD);
builtin(<<"_whereis">>, [Name]) -> whereis_name(Name);
builtin(<<"_has_function">>, [Name]) -> is_binary(Name) andalso ets:member(?TAB, Name);
builtin(Name, _Args) ->
	%% A reserved name that is no builtin (or a builtin called with the wrong arguments).
	error({not_registered, Name}).

%% {error, full | reserved_key} from py_state becomes an ErlangError in Python.
ok_or_raise(ok) -> ok;
ok_or_raise({error, Why}) -> error(Why).

registered(Name, Args) ->
	case ets:lookup(?TAB, Name) of
		[{_, Fun}] when is_function(Fun) -> Fun(Args);
		[{_, {M, F}}] -> M:F(Args);
		[] -> error({not_registered, Name})
	end.

whereis_name(Name) when is_binary(Name) ->
	try binary_to_existing_atom(Name, utf8) of
		Atom -> whereis_name(Atom)
	catch error:badarg -> none
	end;
whereis_name(Name) when is_atom(Name) ->
	case whereis(Name) of
		undefined -> none;
		Pid -> Pid
	end;
whereis_name(Name) ->
	%% pylib/erlang/_callbacks.py checks the type first; this is the answer for anything else.
	error({badarg, {whereis_name_not_a_str, Name}}).

%% "Reason (in Module:Function/Arity line N)": the reason, depth-limited, and where it was raised.
describe(Reason, Stack) ->
	Where = case Stack of
		[{M, F, A, Info} | _] ->
			Arity = if is_list(A) -> length(A); true -> A end,
			Line = case lists:keyfind(line, 1, Info) of
				{line, L} -> io_lib:format(" line ~b", [L]);
				false -> ""
			end,
			io_lib:format(" (in ~tp:~tp/~b~s)", [M, F, Arity, Line]);
		_ ->
			""
	end,
	unicode:characters_to_binary([io_lib:format("~tP", [Reason, 30]), Where]).
