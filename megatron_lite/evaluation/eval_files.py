"""The source files a per-language perplexity run scores (no torch here: inputs are checked before it loads)."""

import collections
import os
from typing import List, Optional, Tuple

from megatron_lite.data.languages import LANGUAGES, language_of
from megatron_lite.errors import UserError


def find_eval_files(data_dir: Optional[str], files: List[str], languages: List[str]) -> List[Tuple[str, str]]:
    """(path, language) of every file to score, sorted: a tree with one folder per language, or a list.

    In a tree, files whose extension names none of `languages` are left out (and counted in the output)."""
    found, ignored = [], collections.Counter()  # extension -> files left out
    if data_dir:
        if not os.path.isdir(data_dir):
            raise UserError(f"eval-data-dir: {data_dir} is not a directory")
        for root, dirs, names in os.walk(data_dir):
            dirs.sort()
            for name in sorted(names):
                language = language_of(name)
                if language in languages:
                    found.append((os.path.join(root, name), language))
                else:
                    ignored[os.path.splitext(name)[1] or name] += 1
    for path in files:
        language = language_of(path)
        if not os.path.isfile(path):
            raise UserError(f"eval-files: {path} does not exist")
        if language is None:
            raise UserError(f"eval-files: {path} has an extension of none of the languages {', '.join(LANGUAGES)}")
        found.append((path, language))
    if not found:
        raise UserError(f"no files of {', '.join(languages)} to score in eval-data-dir {data_dir!r} / eval-files")
    if ignored:
        kinds = ", ".join(f"{count} {ext}" for ext, count in ignored.most_common())
        print(f"perplexity: {sum(ignored.values())} files in {data_dir} are not in eval-languages and are not "
              f"scored ({kinds})")
    return found
