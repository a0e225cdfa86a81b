"""Emulated guests on PTYs: Linux and Windows (SAC) personalities behind the Machine protocol."""
