defmodule Py.DoctestTest do
  use ExUnit.Case, async: false
  doctest Py
  doctest Py.Error
  doctest Py.Context
  doctest Py.Pool
end
