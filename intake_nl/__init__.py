"""Natural-language task intake: an instruction (Chinese or English) parsed into a validated task submission."""
