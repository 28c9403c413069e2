%% Preload code: Python run once in every context as it starts, whose globals become the base that
%% every process-local environment of that context starts as a copy of.
%%
%% Scope: storing the code. It travels to the port in each context_init frame (py_import:
%% context_init_body/0, PROTOCOL.md §3.6), which py_port sends to its contexts after every hello and
%% py_context after creating one; the port runs it after the registered paths and imports. A change
%% therefore reaches only contexts created afterwards: running ones keep the base they have.
%%
%% Storage: persistent_term (read on every context start, written rarely).
-module(py_preload).

%% API.
-export([set_code/1]).
-export([get_code/0]).
-export([clear_code/0]).
-export([has_preload/0]).

-define(KEY, {?MODULE, code}).

%% API.

%% Sets the preload code (Python source) for contexts created from now on. An iolist is taken as
%% UTF-8 bytes; a list that is not (a charlist with code points beyond ASCII) as characters.
-spec set_code(binary() | iolist()) -> ok.
set_code(Code) when is_binary(Code); is_list(Code) ->
	persistent_term:put(?KEY, source(Code)).

-spec get_code() -> binary() | undefined.
get_code() ->
	persistent_term:get(?KEY, undefined).

%% New contexts start with empty globals again; running ones keep theirs.
-spec clear_code() -> ok.
clear_code() ->
	_ = persistent_term:erase(?KEY),
	ok.

-spec has_preload() -> boolean().
has_preload() ->
	get_code() =/= undefined.

%% Internal.

source(Code) ->
	Bytes = try iolist_to_binary(Code) catch error:badarg -> undefined end,
	case is_binary(Bytes) andalso unicode:characters_to_binary(Bytes) of
		Bytes -> Bytes;
		_ ->
			case unicode:characters_to_binary(Code) of
				Bin when is_binary(Bin) -> Bin;
				_ -> error(badarg, [Code])
			end
	end.
