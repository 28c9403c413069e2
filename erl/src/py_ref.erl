%% References to Python objects that stay in the port (PROTOCOL.md §3.8).
%%
%% Scope: the reference value and the operations on it. A call with `return => ref` in its kwargs
%% (call_body/5 makes its request body) is answered {py_ref, ObjId, TypeName}; py_request turns that
%% into a reference (new/6) that records where the object lives: the slot, the context id and the OS
%% process generation the request went to, and the environment (the calling process, usually) that
%% owns it. Every operation goes to exactly that context of exactly that OS process as a ref_op
%% request; after a restart of the port the object is gone and the answer is {error, stale_ref}.
%%
%% Lifetime: the object is freed by release/1, when its owning process exits (the port frees the
%% objects of an environment with it, on env_drop), or when its context is destroyed. `return` is a
%% Python keyword, so `return => ref` can never be meant as a real keyword argument.
-module(py_ref).

%% API.
-export([call_body/5]).
-export([new/6]).
-export([is_ref/1]).
-export([type_name/1]).
-export([call_method/5]).
-export([getattr/3]).
-export([to_term/2]).
-export([release/1]).
-export([release/2]).

-export_type([ref/0]).

-record(py_ref, {
	slot :: pos_integer(),
	ctx :: pos_integer(),
	generation :: pos_integer(),
	env :: pid() | reference() | undefined,
	id :: pos_integer(),
	type :: binary()
}).

-opaque ref() :: #py_ref{}.

-define(RELEASE_TIMEOUT, 5000).

%% API.

%% The body of a call request: with `return => ref` in Kwargs, the 6-tuple that asks the port for a
%% reference (the key taken out of the keyword arguments); otherwise the plain 5-tuple.
-spec call_body(pid() | reference() | undefined, atom() | binary(), atom() | binary(), list(), map()) -> tuple().
call_body(Env, Module, Function, Args, Kwargs) ->
	case maps:take(return, Kwargs) of
		{ref, Kwargs1} -> {Env, Module, Function, Args, Kwargs1, #{return => ref}};
		_ -> {Env, Module, Function, Args, Kwargs}
	end.

%% A reference to object ObjId of the environment Env in context Ctx of OS process Generation of Slot.
-spec new(pos_integer(), pos_integer(), pos_integer(), pid() | reference() | undefined, pos_integer(),
	binary()) -> ref().
new(Slot, Ctx, Generation, Env, ObjId, TypeName) ->
	#py_ref{slot = Slot, ctx = Ctx, generation = Generation, env = Env, id = ObjId, type = TypeName}.

-spec is_ref(term()) -> boolean().
is_ref(#py_ref{}) -> true;
is_ref(_) -> false.

%% The Python type name of the object (<<"list">>), known without a round trip.
-spec type_name(ref()) -> binary().
type_name(#py_ref{type = Type}) ->
	Type.

%% Ref.Name(*Args, **Kwargs).
-spec call_method(ref(), atom() | binary(), list(), map(), timeout()) -> {ok, term()} | {error, term()}.
call_method(Ref = #py_ref{}, Name, Args, Kwargs, Timeout) when is_list(Args), is_map(Kwargs) ->
	op(Ref, call_method, name(Name), Args, Kwargs, Timeout).

%% Ref.Name.
-spec getattr(ref(), atom() | binary(), timeout()) -> {ok, term()} | {error, term()}.
getattr(Ref = #py_ref{}, Name, Timeout) ->
	op(Ref, getattr, name(Name), [], #{}, Timeout).

%% The object converted to a term, as a plain call would have returned it.
-spec to_term(ref(), timeout()) -> {ok, term()} | {error, term()}.
to_term(Ref = #py_ref{}, Timeout) ->
	op(Ref, to_term, undefined, [], #{}, Timeout).

%% Frees the object now (later operations on the reference fail with the port's KeyError).
-spec release(ref()) -> ok | {error, term()}.
release(Ref) ->
	release(Ref, ?RELEASE_TIMEOUT).

-spec release(ref(), timeout()) -> ok | {error, term()}.
release(Ref = #py_ref{}, Timeout) ->
	case op(Ref, release, undefined, [], #{}, Timeout) of
		{ok, _} -> ok;
		{error, _} = Error -> Error
	end.

%% Internal.

%% Name is undefined, Args [] and Kwargs #{} where the operation takes none (PROTOCOL.md §3.8).
op(#py_ref{slot = Slot, ctx = Ctx, generation = Gen, env = Env, id = ObjId}, Op, Name, Args, Kwargs, Timeout) ->
	py_request:run_pinned(ref_op, Slot, Ctx, Gen, {Env, ObjId, Op, Name, Args, Kwargs}, Timeout).

name(Name) when is_atom(Name); is_binary(Name) -> Name;
name(Name) when is_list(Name) -> unicode:characters_to_binary(Name).
