# The erlang_python application is a dependency, so mix starts it before the tests.
ExUnit.start()
