%% The import and path registry applied to every context (stub: filled in by the py_import work).
-module(py_import).

-export([context_init_body/0]).

%% The body of a context_init frame (PROTOCOL.md §3.6): the registered paths, the registered imports
%% and the preload code, for a context that starts (or a port that said hello).
-spec context_init_body() -> {[binary()], [{binary(), binary() | all}], binary() | undefined}.
context_init_body() ->
	{[], [], undefined}.
