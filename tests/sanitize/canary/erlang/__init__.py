# The sanitizer stage's canary (tools/sanitize.sh): the port imports this package at start-up, and it
# overflows a malloc'd buffer through libc's memmove, which ASan intercepts. If that leaves no report
# in the stage's log_path, the stage could not see a real finding either, and fails.
import ctypes

libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
buf = libc.malloc(4)
ctypes.memmove(buf, b"x" * 64, 64)
