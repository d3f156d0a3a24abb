import CWeftLinux

// `weft run` forwards signals to the wrapped command and must clean up after it, so the
// signals it forwards are blocked here, on the main thread, before any other thread exists:
// every thread created later inherits the mask, and no thread can be killed by them.
if CommandLine.arguments.dropFirst().first == "run" {
    _ = weft_block_forwarded_signals()
}

await Weft.main()
