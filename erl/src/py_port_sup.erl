%% Supervises the py_port owners, one per slot. Each owner restarts its own OS process when it dies
%% (with backoff); this supervisor only restarts an owner that crashed.
-module(py_port_sup).
-behaviour(supervisor).

%% API.
-export([start_link/2]).

%% supervisor.
-export([init/1]).

%% API.

-spec start_link(pos_integer(), map()) -> {ok, pid()} | {error, term()}.
start_link(NumPorts, PortOpts) ->
	supervisor:start_link({local, ?MODULE}, ?MODULE, {NumPorts, PortOpts}).

%% supervisor.

-spec init({pos_integer(), map()}) -> {ok, {supervisor:sup_flags(), [supervisor:child_spec()]}}.
init({NumPorts, PortOpts}) ->
	Children = [py_port:child_spec(Slot, PortOpts) || Slot <- lists:seq(1, NumPorts)],
	{ok, {#{strategy => one_for_one, intensity => 10, period => 60}, Children}}.
