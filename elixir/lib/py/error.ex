defmodule Py.Error do
  @moduledoc """
  The exception the bang functions (`Py.call!/5`, `Py.eval!/3`, `Py.exec!/2`, ...) raise.

    * `:class` - the Python exception class: an atom (`:ZeroDivisionError`), or a binary for a
      class name that is not an atom yet (data from Python never creates atoms); `nil` when the
      failure is not a Python exception (a timeout, a port that died, ...).
    * `:message` - `str(exc)` for a Python exception, otherwise a description of `:reason`.
    * `:traceback` - the formatted Python traceback (a binary), from `:py.last_traceback/0` for a
      Python exception, or the crash report of a port that died (`port_exited`); `nil` otherwise.
    * `:reason` - the error term `:py` returned, as in `{:error, reason}`.

      iex> try do
      ...>   Py.eval!("1/0")
      ...> rescue
      ...>   e in Py.Error -> {e.class, e.message, e.traceback =~ "ZeroDivisionError"}
      ...> end
      {:ZeroDivisionError, "division by zero", true}
  """

  defexception [:class, :message, :traceback, :reason]

  @type t :: %__MODULE__{
          class: atom() | binary() | nil,
          message: String.t(),
          traceback: binary() | nil,
          reason: term()
        }

  @doc """
  The exception for an `{:error, reason}` that `:py` returned. Call it in the process that made the
  request: a Python exception's traceback is kept per process. `traceback: false` leaves it out
  (for errors of requests another process made, such as a stream's).

      iex> e = Py.Error.from_reason(:timeout)
      iex> {e.class, e.message}
      {nil, "timeout"}
  """
  @spec from_reason(term(), keyword()) :: t()
  def from_reason(reason, opts \\ [])

  def from_reason({class, message} = reason, opts)
      when (is_atom(class) or is_binary(class)) and is_list(message) do
    tb = if Keyword.get(opts, :traceback, true), do: nil_if_undefined(:py.last_traceback())

    %__MODULE__{class: class, message: List.to_string(message), traceback: tb, reason: reason}
  end

  def from_reason({:port_exited, info} = reason, _opts) when is_map(info) do
    tb =
      case Map.get(info, :traceback) do
        tb when is_binary(tb) and tb != "" -> tb
        _ -> nil
      end

    %__MODULE__{
      class: nil,
      message: "Python port exited: " <> inspect(info),
      traceback: tb,
      reason: reason
    }
  end

  def from_reason(reason, _opts) do
    %__MODULE__{class: nil, message: describe(reason), traceback: nil, reason: reason}
  end

  @impl true
  def message(%__MODULE__{class: nil, message: message}), do: message
  def message(%__MODULE__{class: class, message: message}), do: "#{class}: #{message}"

  defp describe(:timeout), do: "timeout"
  defp describe(reason), do: inspect(reason)

  defp nil_if_undefined(:undefined), do: nil
  defp nil_if_undefined(tb), do: tb
end
