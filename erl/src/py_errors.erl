%% Python exception class names as atoms, without ever minting atoms from Python data.
%%
%% Scope: class/1 turns the class name of an error frame (a binary) into an existing atom, or leaves it
%% a binary when no such atom exists. builtin_classes/0 lists the exception classes users match on:
%% because this module names them, loading it (the application does at start) makes those atoms exist,
%% so `{error, {'ZeroDivisionError', _}}` always matches. Any other class (a library's own
%% exception, say `JSONDecodeError`) is an atom only if some loaded code already has that atom.
-module(py_errors).

%% API.
-export([builtin_classes/0]).
-export([class/1]).

%% API.

%% The Python exception classes that always come back as atoms.
-spec builtin_classes() -> [atom()].
builtin_classes() ->
	['ArithmeticError', 'AssertionError', 'AttributeError', 'BaseException', 'BlockingIOError',
	 'BrokenPipeError', 'BufferError', 'BytesWarning', 'CancelledError', 'ChildProcessError',
	 'ConnectionAbortedError', 'ConnectionError', 'ConnectionRefusedError', 'ConnectionResetError',
	 'DeprecationWarning', 'EOFError', 'EnvironmentError', 'ErlangError', 'Exception',
	 'ExceptionGroup', 'BaseExceptionGroup', 'FileExistsError', 'FileNotFoundError',
	 'FloatingPointError', 'FutureWarning', 'GeneratorExit', 'IOError', 'ImportError',
	 'ImportWarning', 'IndentationError', 'IndexError', 'InterruptedError', 'IsADirectoryError',
	 'JSONDecodeError', 'KeyError', 'KeyboardInterrupt', 'LookupError', 'MemoryError',
	 'ModuleNotFoundError', 'NameError', 'NotADirectoryError', 'NotImplementedError', 'OSError',
	 'OverflowError', 'PendingDeprecationWarning', 'PermissionError', 'ProcessError',
	 'ProcessLookupError', 'RecursionError', 'ReferenceError', 'ResourceWarning', 'RuntimeError',
	 'RuntimeWarning', 'StopAsyncIteration', 'StopIteration', 'SyntaxError', 'SyntaxWarning',
	 'SystemError', 'SystemExit', 'TabError', 'TimeoutError', 'TypeError', 'UnboundLocalError',
	 'UnicodeDecodeError', 'UnicodeEncodeError', 'UnicodeError', 'UnicodeTranslateError',
	 'UnicodeWarning', 'UserWarning', 'ValueError', 'Warning', 'ZeroDivisionError'].

%% The class name of an error frame as an existing atom, or the binary itself.
-spec class(binary()) -> atom() | binary().
class(Name) when is_binary(Name) ->
	try binary_to_existing_atom(Name, utf8)
	catch error:badarg -> Name
	end.
