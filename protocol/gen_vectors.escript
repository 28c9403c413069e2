#!/usr/bin/env escript
%% -*- erlang -*-
%%! -noshell
%% Writes the golden vectors of PROTOCOL.md §5 from protocol/vectors/terms.eterm:
%% <Name>.etf (term_to_binary(Term, [{minor_version, 2}])), <Name>.msgpack (py_msgpack:encode/1, compiled
%% from erl/src) and MANIFEST ("name flag ..." per line). Run from anywhere:
%%   escript protocol/gen_vectors.escript
%% The output is deterministic: running it again must leave the files unchanged.

main(_) ->
	Here = filename:dirname(filename:absname(escript:script_name())),
	Dir = filename:join(Here, "vectors"),
	Src = filename:join([Here, "..", "erl", "src", "py_msgpack.erl"]),
	{ok, py_msgpack, Beam} = compile:file(Src, [binary, report_errors]),
	{module, py_msgpack} = code:load_binary(py_msgpack, Src, Beam),
	{ok, Entries} = file:consult(filename:join(Dir, "terms.eterm")),
	Names = [Name || {Name, _, _} <- Entries],
	length(Names) =:= length(lists:usort(Names)) orelse halt_with("duplicate vector names"),
	Lines = [write(Dir, Entry) || Entry <- Entries],
	ok = file:write_file(filename:join(Dir, "MANIFEST"), Lines),
	io:format("wrote ~b vectors to ~s~n", [length(Entries), Dir]).

write(Dir, {Name, Raw, Flags}) ->
	true = lists:all(fun(F) -> lists:member(F, [etf_exact, msgpack_exact]) end, Flags),
	Term = expand(Raw),
	Etf = term_to_binary(Term, [{minor_version, 2}]),
	Msgpack = iolist_to_binary(py_msgpack:encode(Term)),
	%% Both files must read back as the term.
	Term = binary_to_term(Etf),
	Term = py_msgpack:decode(Msgpack),
	ok = file:write_file(filename:join(Dir, atom_to_list(Name) ++ ".etf"), Etf),
	ok = file:write_file(filename:join(Dir, atom_to_list(Name) ++ ".msgpack"), Msgpack),
	[lists:join(" ", [atom_to_list(Name) | [atom_to_list(F) || F <- Flags]]), "\n"].

%% Replaces every {'$eval', "Expr"} by the value of Expr.
expand({'$eval', Source}) ->
	{ok, Tokens, _} = erl_scan:string(Source ++ "."),
	{ok, [Expr]} = erl_parse:parse_exprs(Tokens),
	{value, Value, _} = erl_eval:expr(Expr, erl_eval:new_bindings()),
	Value;
expand(List) when is_list(List) ->
	[expand(E) || E <- List];
expand(Tuple) when is_tuple(Tuple) ->
	list_to_tuple(expand(tuple_to_list(Tuple)));
expand(Map) when is_map(Map) ->
	maps:from_list([{expand(K), expand(V)} || {K, V} <- maps:to_list(Map)]);
expand(Other) ->
	Other.

halt_with(Why) ->
	io:format(standard_error, "gen_vectors: ~s~n", [Why]),
	halt(1).
