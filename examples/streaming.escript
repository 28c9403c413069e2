#!/usr/bin/env escript
%%! -pa _build/default/lib/erlang_python/ebin
%% A Python generator yields a text token by token; an Erlang process prints each token as it
%% arrives. Run from the repository root: escript examples/streaming.escript
main(_) ->
	ok = logger:set_primary_config(level, notice),
	{ok, _} = application:ensure_all_started(erlang_python),
	ok = py_import:add_path(filename:absname(filename:join(filename:dirname(escript:script_name()), "python"))),
	Text = <<"Erlang processes receive Python tokens one at a time as they are produced">>,
	Parent = self(),
	T0 = erlang:monotonic_time(millisecond),
	Printer = spawn_link(fun() -> print_tokens(Parent, T0, []) end),
	{ok, Ref} = py:stream_start(token_stream, tokens, [Text], #{owner => Printer}),
	Printer ! {stream, Ref},
	receive
		{printed, Arrivals} ->
			Total = erlang:monotonic_time(millisecond) - T0,
			N = length(Arrivals),
			First = hd(Arrivals),
			io:format("~n~p tokens in ~p ms; the first arrived after ~p ms~n", [N, Total, First]),
			%% Streamed, not collected: the first token is printed long before the generator ends.
			N = length(binary:split(Text, <<" ">>, [global])),
			true = First < Total div 2 orelse begin io:format("not streamed~n"), halt(1) end
	after 30000 ->
		io:format("no end of stream~n"), halt(1)
	end,
	ok = application:stop(erlang_python).

print_tokens(Parent, T0, Acc) ->
	receive
		{stream, Ref} -> print_tokens(Parent, T0, Ref, Acc)
	after 5000 -> exit(no_stream)
	end.

print_tokens(Parent, T0, Ref, Acc) ->
	receive
		{py_stream, Ref, {data, Token}} ->
			At = erlang:monotonic_time(millisecond) - T0,
			io:format("[~4w ms] ~ts~n", [At, Token]),
			print_tokens(Parent, T0, Ref, [At | Acc]);
		{py_stream, Ref, done} ->
			Parent ! {printed, lists:reverse(Acc)};
		{py_stream, Ref, {error, Reason}} ->
			io:format("stream error: ~p~n", [Reason]), halt(1)
	after 10000 ->
		io:format("no token for 10 s~n"), halt(1)
	end.
