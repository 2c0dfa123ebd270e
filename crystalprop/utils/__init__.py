"""What every stage leans on and none owns: MindSpore's import and device (``backend``), compiling the C++
kernels once per machine (``native``), time limits, the signals that stop a command cleanly, atomic
file writes, files' sha256, the terminal's two streams (``console``), worker processes started safely
(``spawn``), the command's quick exit and start-up without garbage collection, lazy attributes."""
