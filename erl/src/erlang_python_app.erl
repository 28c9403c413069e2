%% The erlang_python application.
-module(erlang_python_app).
-behaviour(application).

%% application.
-export([start/2]).
-export([stop/1]).

%% application.

-spec start(application:start_type(), term()) -> {ok, pid()} | {error, term()}.
start(_Type, _Args) ->
	%% Loading py_errors makes the Python exception class atoms exist (see py_errors).
	_ = py_errors:builtin_classes(),
	ok = py_log_filters:install(),
	erlang_python_sup:start_link().

-spec stop(term()) -> ok.
stop(_State) ->
	ok = py_log_filters:remove(),
	ok = py_shm:teardown(),  %% bulk: this VM's shared-memory directory goes with the application
	py_router:erase_config().
