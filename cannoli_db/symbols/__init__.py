"""Symbols and source lines of the guest's modules, as gdb finds them.

- debug_files: where a module is on this host, and its separate debug file
  (by build ID, then by `.gnu_debuglink` with its CRC).
- elf_symbols: FUNC and OBJECT symbols of a module merged with its debug file's.
- lines: source file and line of an address from DWARF `.debug_line`.

`cannoli_db.symbolize.Symbolizer` puts them together for a trace's modules.
"""

from .debug_files import find_debug_file, host_path
from .elf_symbols import elf_symbols, module_symbols
from .lines import SourceLines

__all__ = ["SourceLines", "elf_symbols", "find_debug_file", "host_path", "module_symbols"]
