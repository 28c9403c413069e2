# Elixir API over the erlang_python OTP application (the repository root, built by rebar3).
#
# How the Erlang application is found, offline and without hex: it is a path dependency on the
# directory rebar3 builds it into (../_build/default/lib/erlang_python, whose priv/ holds the port
# and its Python package). `compile: "true"` tells mix the dependency is already compiled: mix then
# only links its ebin/ and priv/ into this project's _build, so `code:priv_dir(erlang_python)` finds
# the port. The aliases below run `rebar3 compile` at the root first (quick when nothing changed), so
# `mix test` and `mix compile` work from a fresh checkout. (`manager: :rebar3` with `path: ".."` would
# have mix drive rebar3 itself, but the root keeps its app in erl/ (project_app_dirs) and builds the
# C++ port through a pre-hook, which mix's bare rebar3 compile does not run.)
defmodule ErlangPythonEx.MixProject do
  use Mix.Project

  @root Path.expand("..", __DIR__)
  @erlang_app Path.join(@root, "_build/default/lib/erlang_python")

  def project do
    [
      app: :erlang_python_ex,
      version: "0.1.0",
      elixir: "~> 1.14",
      start_permanent: Mix.env() == :prod,
      deps: deps(),
      aliases: aliases(),
      docs: [main: "Py"]
    ]
  end

  def application do
    [extra_applications: [:logger]]
  end

  defp deps do
    [{:erlang_python, path: @erlang_app, compile: "true"}]
  end

  defp aliases do
    [
      compile: [&build_erlang_python/1, "compile"],
      test: [&build_erlang_python/1, "test"]
    ]
  end

  # `rebar3 compile` at the repository root (set EP_SKIP_REBAR=1 to skip it when the caller built
  # already, as tools/test.sh does).
  # `mix test` runs the compile alias too: the build runs once per mix invocation.
  defp build_erlang_python(_args) do
    skip? = System.get_env("EP_SKIP_REBAR") == "1" and File.dir?(Path.join(@erlang_app, "ebin"))

    unless skip? or Process.get(:erlang_python_built) do
      Process.put(:erlang_python_built, true)
      rebar = System.get_env("MIX_REBAR3") || System.find_executable("rebar3") || "rebar3"
      {out, status} = System.cmd(rebar, ["compile"], cd: @root, stderr_to_stdout: true)
      if status != 0, do: Mix.raise("rebar3 compile failed at #{@root}:\n" <> out)
    end
  end
end
