%% Feature probes for the suites whose cases need work of other branches of this round (the port's
%% context_init and ref_op, py_context). A case that needs a missing feature skips and says which;
%% once the feature is merged the probe finds it and the case runs.
-module(py_ct_probe).

-export([port_supports/1]).
-export([has_py_context/0]).

%% Whether the port of slot 1 knows the message kind: anything but protocol_error unknown_kind.
%% context_init with no paths, imports or preload, and ref_op on an object id nobody has, change
%% nothing.
port_supports(Feature) ->
	#{contexts := Contexts, codec := Codec} = py_port:info(1),
	{KindByte, Body} = case Feature of
		context_init -> {13, {[], [], undefined}};
		ref_op -> {15, {undefined, 999999999, to_term, undefined, [], #{}}}
	end,
	Id = py_ct_helper:raw_request(1, KindByte, element(1, Contexts), 0, py_codec:encode(Codec, Body)),
	receive
		{py_frame, Id, 70, _, Reply} ->
			case py_codec:decode(Codec, Reply) of
				{unknown_kind, _} -> false;
				_ -> true
			end;
		{py_frame, Id, _, _, _} ->
			true
	after 10000 ->
		error({probe_timeout, Feature})
	end.

%% Whether py_context:new/1 (explicit contexts) exists.
has_py_context() ->
	_ = code:ensure_loaded(py_context),
	erlang:function_exported(py_context, new, 1).
