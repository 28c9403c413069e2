%% Runs the Erlang code samples of a Markdown page (docs/*.md) and checks what they print, so the
%% documentation cannot rot (py_docs_SUITE; the Elixir samples: elixir/test/docs_test.exs).
%%
%% A fenced ```erlang block is one of:
%%   - a shell session: lines `N> Expr.` (an expression may go on over more lines until it ends with a
%%     dot), each followed by the lines the shell prints for it. The expression is evaluated with the
%%     bindings of every earlier one on the page (one shell session per page); the printed lines are
%%     matched as a pattern against the value (so `{ok, _}` is allowed), or, when they are not a valid
%%     pattern (`#{a => 1}`), evaluated and compared with =:=. No printed lines: the value is not checked.
%%   - a module (first form `-module(...)`): compiled and loaded, for later sessions on the page;
%%   - anything else (a sys.config snippet, a code fragment): it must parse, as terms or expressions.
-module(py_docs_check).

-export([blocks/1]).
-export([run_page/1]).
-export([session/1]).

-type block() :: {Lang :: binary(), Line :: pos_integer(), Text :: binary()}.
-type step() :: {Line :: pos_integer(), Expr :: string(), Expected :: string()}.

%% The fenced blocks of a page, with the line each starts on.
-spec blocks(binary()) -> [block()].
blocks(Md) ->
	Lines = binary:split(Md, <<"\n">>, [global]),
	blocks(Lines, 1, []).

blocks([], _, Acc) ->
	lists:reverse(Acc);
blocks([<<"```", Lang/binary>> | Rest], N, Acc) when Lang =/= <<>> ->
	{Body, After, Used} = fence(Rest, []),
	blocks(After, N + Used + 1, [{string:trim(Lang), N + 1, iolist_to_binary(lists:join(<<"\n">>, Body))} | Acc]);
blocks([_ | Rest], N, Acc) ->
	blocks(Rest, N + 1, Acc).

fence([<<"```">> | Rest], Acc) -> {lists:reverse(Acc), Rest, length(Acc) + 1};
fence([L | Rest], Acc) -> fence(Rest, [L | Acc]);
fence([], Acc) -> {lists:reverse(Acc), [], length(Acc)}.

%% Runs every Erlang block of the page in a fresh process; ok, or {error, [Failure]}.
-spec run_page(file:filename()) -> ok | {error, [term()]}.
run_page(File) ->
	{ok, Md} = file:read_file(File),
	Erlang = [B || {<<"erlang">>, _, _} = B <- blocks(Md)],
	Parent = self(),
	{Pid, MRef} = spawn_monitor(fun() -> Parent ! {self(), run_blocks(Erlang, erl_eval:new_bindings(), [])} end),
	receive
		{Pid, []} -> erlang:demonitor(MRef, [flush]), ok;
		{Pid, Failures} -> erlang:demonitor(MRef, [flush]), {error, Failures};
		{'DOWN', MRef, process, Pid, Reason} -> {error, [{crashed, Reason}]}
	after 300000 ->
		exit(Pid, kill),
		{error, [timeout]}
	end.

run_blocks([], _, Failures) ->
	lists:reverse(Failures);
run_blocks([{_, Line, Text} | Rest], Bindings, Failures) ->
	case classify(Text) of
		session ->
			{Bindings1, New} = run_session(session(Text), Line, Bindings),
			run_blocks(Rest, Bindings1, New ++ Failures);
		module ->
			run_blocks(Rest, Bindings, compile_module(Text, Line) ++ Failures);
		fragment ->
			run_blocks(Rest, Bindings, parses(Text, Line) ++ Failures)
	end.

classify(Text) ->
	case re:run(Text, <<"^[0-9]+> ">>, [multiline]) of
		{match, _} -> session;
		nomatch ->
			case re:run(Text, <<"\\A\\s*(%[^\\n]*\\n\\s*)*-module\\(">>) of
				{match, _} -> module;
				nomatch -> fragment
			end
	end.

%% The steps of a session block: {Line offset, Expression, Expected output}.
-spec session(binary()) -> [step()].
session(Text) ->
	Lines = [binary_to_list(L) || L <- binary:split(Text, <<"\n">>, [global])],
	steps(lists:zip(lists:seq(0, length(Lines) - 1), Lines), []).

steps([], Acc) ->
	lists:reverse(Acc);
steps([{Off, L} | Rest], Acc) ->
	case re:run(L, "^[0-9]+> (.*)$", [{capture, all_but_first, list}]) of
		{match, [First]} ->
			{Expr, Rest1} = expression(First, Rest),
			{Out, Rest2} = lists:splitwith(fun({_, X}) -> not is_prompt(X) end, Rest1),
			Expected = string:trim(lists:join("\n", [X || {_, X} <- Out])),
			steps(Rest2, [{Off, Expr, Expected} | Acc]);
		nomatch ->
			steps(Rest, Acc)
	end.

is_prompt(L) -> re:run(L, "^[0-9]+> ") =/= nomatch.

%% An expression goes on until its tokens end with a dot.
expression(Sofar, Rest) ->
	case erl_scan:tokens([], Sofar ++ "\n", 1) of
		{done, {ok, _, _}, _} -> {Sofar, Rest};
		_ ->
			case Rest of
				[{_, L} | Rest1] -> expression(Sofar ++ "\n" ++ L, Rest1);
				[] -> {Sofar, []}
			end
	end.

run_session(Steps, Line, Bindings) ->
	lists:foldl(fun({Off, Expr, Expected}, {B, Fs}) ->
		case step(Expr, Expected, B) of
			{ok, B1} -> {B1, Fs};
			{error, Why} -> {B, [{Line + Off, Expr, Why} | Fs]}
		end
	end, {Bindings, []}, Steps).

step(Expr, Expected, Bindings) ->
	try
		{value, Value, B1} = erl_eval:exprs(parse(Expr), Bindings),
		case Expected of
			"" -> {ok, B1};
			_ -> check(Value, Expected, B1)
		end
	catch Class:Reason:Stack ->
		{error, {Class, Reason, lists:sublist(Stack, 3)}}
	end.

%% The printed lines as a pattern matched against the value; if they are no pattern, as a term.
check(Value, Expected, Bindings) ->
	Var = 'DocsCheckValue__',
	B = erl_eval:add_binding(Var, Value, Bindings),
	case catch erl_eval:exprs(parse(Expected ++ " = " ++ atom_to_list(Var) ++ "."), B) of
		{value, _, _} -> {ok, Bindings};
		{'EXIT', {{badmatch, _}, _}} -> {error, {printed, Value, expected, Expected}};
		_ ->
			case catch erl_eval:exprs(parse(Expected ++ "."), Bindings) of
				{value, Value, _} -> {ok, Bindings};
				_ -> {error, {printed, Value, expected, Expected}}
			end
	end.

parse(Source) ->
	{ok, Tokens, _} = erl_scan:string(Source),
	{ok, Exprs} = erl_parse:parse_exprs(Tokens),
	Exprs.

compile_module(Text, Line) ->
	try
		Forms = forms(binary_to_list(Text)),
		{ok, Mod, Bin} = compile:forms(Forms, [return_errors]),
		{module, Mod} = code:load_binary(Mod, "docs", Bin),
		[]
	catch Class:Reason ->
		[{Line, module, {Class, Reason}}]
	end.

forms(Source) ->
	{ok, Tokens, _} = erl_scan:string(Source),
	[begin {ok, F} = erl_parse:parse_form(Ts), F end || Ts <- split_dots(Tokens, [], [])].

split_dots([], [], Acc) -> lists:reverse(Acc);
split_dots([], Cur, Acc) -> lists:reverse([lists:reverse(Cur) | Acc]);
split_dots([{dot, _} = D | Rest], Cur, Acc) -> split_dots(Rest, [], [lists:reverse([D | Cur]) | Acc]);
split_dots([T | Rest], Cur, Acc) -> split_dots(Rest, [T | Cur], Acc).

%% A fragment parses as dot-terminated terms (a sys.config) or expressions.
parses(Text, Line) ->
	Source = binary_to_list(Text),
	case erl_scan:string(Source) of
		{ok, Tokens, _} ->
			Chunks = split_dots(Tokens, [], []),
			Ok = Chunks =/= [] andalso lists:all(fun(Ts) ->
				element(1, erl_parse:parse_term(Ts)) =:= ok orelse element(1, erl_parse:parse_exprs(Ts)) =:= ok
			end, Chunks),
			case Ok of
				true -> [];
				false -> [{Line, fragment, does_not_parse}]
			end;
		Error ->
			[{Line, fragment, Error}]
	end.
