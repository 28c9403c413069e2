// The port's debugging subcommands (protocol/RECORDING.md):
//   erlang_python_port dump FILE [--full]
//   erlang_python_port replay FILE [--timeout-ms N] [--port EXE] [PORT OPTIONS...]
#pragma once

namespace ep::rec {

// Prints every record of FILE, bodies decoded. Exit status 0, or 2 if FILE is not a recording.
int dump_main(int argc, char** argv);
// Re-drives a fresh port with FILE's E->P frames and compares its frames with the recorded P->E ones.
// Exit status 0 all match, 1 differences (printed), 2 usage or unreadable file, 3 not replayable
// (shared-memory frames).
int replay_main(int argc, char** argv);

}  // namespace ep::rec
