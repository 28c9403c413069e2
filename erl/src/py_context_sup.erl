%% Supervises the explicit contexts made by py_context:new/1 (simple_one_for_one). They are temporary:
%% their owner holds the pid, and a restarted context would be another pid with none of its state.
-module(py_context_sup).
-behaviour(supervisor).

%% API.
-export([start_link/0]).
-export([start_context/2]).
-export([stop_context/1]).
-export([which_contexts/0]).

%% supervisor.
-export([init/1]).

%% API.

-spec start_link() -> {ok, pid()} | {error, term()}.
start_link() ->
	supervisor:start_link({local, ?MODULE}, ?MODULE, []).

-spec start_context(term(), py_context:context_mode()) -> {ok, pid()} | {error, term()}.
start_context(Id, Mode) ->
	try supervisor:start_child(?MODULE, [Id, Mode]) of
		{ok, Pid} -> {ok, Pid};
		{error, _} = Error -> Error
	catch exit:{noproc, _} ->
		{error, not_started}
	end.

-spec stop_context(pid()) -> ok | {error, term()}.
stop_context(Pid) ->
	py_context:stop(Pid).

%% Every running context started by start_context/2.
-spec which_contexts() -> [pid()].
which_contexts() ->
	[Pid || {_, Pid, _, _} <- supervisor:which_children(?MODULE), is_pid(Pid)].

%% supervisor.

-spec init([]) -> {ok, {supervisor:sup_flags(), [supervisor:child_spec()]}}.
init([]) ->
	Child = #{id => py_context, start => {py_context, start_link, []}, restart => temporary,
		shutdown => 5000, type => worker, modules => [py_context]},
	{ok, {#{strategy => simple_one_for_one, intensity => 10, period => 10}, [Child]}}.
