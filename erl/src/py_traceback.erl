%% The formatted Python traceback of the calling process's last failed request (issue 12).
%%
%% The port sends every Python exception as {Class, Message, Traceback} (PROTOCOL.md §4.3); py:call and
%% friends keep their documented {error, {Class, Message}} shape, and the traceback goes to the caller's
%% process dictionary, the way Python keeps sys.last_traceback. One entry per process, overwritten by
%% the next Python exception and freed with the process: it cannot grow. The Elixir wrapper's bang
%% functions (elixir/lib/py.ex) put it in Py.Error.
-module(py_traceback).

-export([record/1]).
-export([last/0]).
-export([clear/0]).

-define(KEY, py_last_traceback).

%% Called by py_request when a request ends with a Python exception, in the process that made it.
-spec record(term()) -> ok.
record(Traceback) when is_binary(Traceback) ->
	_ = put(?KEY, Traceback),
	ok;
record(Traceback) when is_list(Traceback) ->
	case unicode:characters_to_binary(Traceback) of
		Bin when is_binary(Bin) -> record(Bin);
		_ -> ok
	end;
record(_) ->
	ok.

%% The traceback of this process's last Python exception, or undefined if it had none (or cleared it).
-spec last() -> binary() | undefined.
last() ->
	get(?KEY).

-spec clear() -> ok.
clear() ->
	_ = erase(?KEY),
	ok.
