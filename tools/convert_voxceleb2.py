"""Convert VoxCeleb2's AAC (.m4a) files to 16 kHz mono wav with ffmpeg.

VoxCeleb2 ships ``dev/aac/<spk>/<video>/<utt>.m4a``, which libsndfile (and
so dampit's loaders) cannot read. This tool decodes every file once with
``ffmpeg -ac 1 -ar 16000`` into a mirror tree (by default the sibling
``wav`` folder: ``dev/aac`` -> ``dev/wav``, where
:func:`dampit.dataio.prepare_voxceleb.prepare_voxceleb` looks) or beside
the ``.m4a`` files (``--beside``).

- Parallel: ``--workers`` ffmpeg processes at once (a thread pool drives
  them; the decoding runs in the ffmpeg processes).
- Resumable: each file is written to a hidden partial file of its own,
  ``.<utt>.wav.<8 hex digits>.part``, and renamed when complete, and
  outputs that already exist and read as 16 kHz mono audio are skipped,
  so an interrupted run is simply started again.
- One converter per output: a run holds its output folder
  (:func:`dampit.utils.file_lock.output_lock`, the lock file
  ``.<folder>.lock`` beside it), so a second converter into the same
  output is refused in one line; under the lock, the partial files a
  killed run left (by their names, which only this tool makes) are
  deleted.
- Failures do not stop the run: they are listed at the end (and in
  ``convert_failures.txt`` in the output folder) and the exit status is 1.

Usage (the VoxCeleb2 root or its ``dev/aac`` folder)::

    python tools/convert_voxceleb2.py /data/voxceleb2 --workers 8
"""

import argparse
import os
import pathlib
import re
import secrets
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import soundfile as sf
from tqdm import tqdm

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from dampit.dataio.preparation import scan_audio_tree  # noqa: E402
from dampit.utils.atomic import atomic_write_text  # noqa: E402
from dampit.utils.file_lock import LockError, output_lock  # noqa: E402

SAMPLE_RATE = 16000
FAILURES = "convert_failures.txt"
#: The name of a partial file of :func:`convert_one`.
PART_NAME = re.compile(r"\.(.+)\.[0-9a-f]{8}\.part")


class FFmpegNotFoundError(RuntimeError):
    """ffmpeg is needed but not installed (or not where it was said to be)."""


def find_ffmpeg(ffmpeg="ffmpeg"):
    """Return the path of the ffmpeg executable or raise a clear error.

    Arguments
    ---------
    ffmpeg : str
        Name or path of the executable.

    Returns
    -------
    str
        Its full path.

    Raises
    ------
    FFmpegNotFoundError
        When it cannot be found.
    """
    path = shutil.which(ffmpeg)
    if path is None:
        raise FFmpegNotFoundError(
            f"ffmpeg not found (looked for {ffmpeg!r} on PATH): install it "
            "(e.g. `apt-get install ffmpeg` or `conda install ffmpeg`) or "
            "pass --ffmpeg /path/to/ffmpeg"
        )
    return path


def is_valid_wav(path, sample_rate=SAMPLE_RATE):
    """Whether ``path`` is a readable, non-empty mono wav at ``sample_rate``.

    Arguments
    ---------
    path : str
        The file.
    sample_rate : int
        The rate it must have.

    Returns
    -------
    bool
        True for a usable converted file.
    """
    try:
        info = sf.info(path)
    except Exception:  # missing, truncated header, not audio
        return False
    return (
        info.frames > 0
        and info.samplerate == sample_rate
        and info.channels == 1
    )


def default_output(src):
    """The mirror folder for ``src``: the sibling ``wav`` folder when
    ``src`` is named ``aac``, else ``<src>_wav``.

    Arguments
    ---------
    src : str
        Folder of ``.m4a`` files.

    Returns
    -------
    str
        Output folder.
    """
    src = os.path.abspath(src)
    if os.path.basename(src) == "aac":
        return os.path.join(os.path.dirname(src), "wav")
    return src + "_wav"


def resolve_source(src):
    """The folder of ``.m4a`` files for ``src``: ``src/dev/aac`` or
    ``src/aac`` when ``src`` is a VoxCeleb2 root holding one, else ``src``.

    Arguments
    ---------
    src : str
        A VoxCeleb2 root or a folder of ``.m4a`` files.

    Returns
    -------
    str
        Absolute path of the folder to convert.
    """
    src = os.path.abspath(src)
    if os.path.basename(src) != "aac":
        for sub in (("dev", "aac"), ("aac",)):
            if os.path.isdir(os.path.join(src, *sub)):
                return os.path.join(src, *sub)
    return src


def remove_stale_parts(out_dir, wav_names):
    """Delete the partial files of ``wav_names`` in ``out_dir`` that a
    killed run left (regular files named as :func:`convert_one` names
    them; anything else stays). Call it holding the output's lock: no
    live converter is then writing them.

    Arguments
    ---------
    out_dir : str
        An output folder.
    wav_names : set of str
        The wav files (names) the converter makes there.

    Example
    -------
    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> for name in (".a.wav.abcd1234.part", ".b.wav.abcd1234.part", "a.part"):
    ...     _ = open(os.path.join(d, name), "w").write("x")
    >>> remove_stale_parts(d, {"a.wav"})
    >>> sorted(os.listdir(d))
    ['.b.wav.abcd1234.part', 'a.part']
    """
    if not os.path.isdir(out_dir):
        return
    with os.scandir(out_dir) as entries:
        stale = []
        for entry in entries:
            match = PART_NAME.fullmatch(entry.name)
            if (
                match
                and match.group(1) in wav_names
                and entry.is_file(follow_symlinks=False)
            ):
                stale.append(entry.path)
    for path in stale:
        _remove(path)


def list_jobs(src, dst=None, overwrite=False, sample_rate=SAMPLE_RATE):
    """Pair every ``.m4a`` under ``src`` with its wav path, and split them
    into work to do and outputs that are already valid. The partial files
    a killed run left beside the outputs are deleted
    (:func:`remove_stale_parts`): call it holding the output's lock.

    Arguments
    ---------
    src : str
        Folder of ``.m4a`` files (searched recursively, hidden names
        skipped).
    dst : str or None
        Output root (None: beside the ``.m4a`` files).
    overwrite : bool
        Convert again even when a valid output exists.
    sample_rate : int
        Output rate.

    Returns
    -------
    todo : list of tuple
        ``(m4a, wav)`` pairs to convert.
    done : list of tuple
        Pairs whose output is already valid.
    """
    todo, done = [], []
    wav_names = {}  # output folder -> the wav names this run makes there
    for rel in scan_audio_tree(src, (".m4a",), min_depth=1):
        wav = os.path.splitext(rel)[0] + ".wav"
        m4a = os.path.join(src, *rel.split("/"))
        pair = (m4a, os.path.join(dst or src, *wav.split("/")))
        out_dir, base = os.path.split(pair[1])
        wav_names.setdefault(out_dir, set()).add(base)
        if not overwrite and is_valid_wav(pair[1], sample_rate):
            done.append(pair)
        else:
            todo.append(pair)
    for out_dir, names in wav_names.items():
        remove_stale_parts(out_dir, names)
    return todo, done


def convert_one(m4a, wav, ffmpeg, sample_rate=SAMPLE_RATE):
    """Decode one file to ``wav`` through a partial file of its own
    (``.<wav name>.<8 hex digits>.part`` beside it).

    Arguments
    ---------
    m4a : str
        Input file.
    wav : str
        Output file.
    ffmpeg : str
        ffmpeg executable.
    sample_rate : int
        Output rate.

    Returns
    -------
    str or None
        None on success, else the reason it failed.
    """
    folder = os.path.dirname(wav) or "."
    os.makedirs(folder, exist_ok=True)
    # A random name of its own, created by ffmpeg (with the umask's mode)
    tag = secrets.token_hex(4)
    part = os.path.join(folder, f".{os.path.basename(wav)}.{tag}.part")
    cmd = [
        ffmpeg,
        "-nostdin",
        "-hide_banner",
        "-loglevel",
        "error",
        "-y",
        "-i",
        m4a,
        "-vn",
        "-ac",
        "1",
        "-ar",
        str(sample_rate),
        "-c:a",
        "pcm_s16le",
        "-f",
        "wav",
        part,
    ]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError as err:
        _remove(part)
        return f"cannot run {ffmpeg}: {err}"
    if res.returncode != 0:
        _remove(part)
        tail = (res.stderr or "").strip().splitlines()[-3:]
        return f"ffmpeg exit {res.returncode}: {' | '.join(tail)}"
    if not is_valid_wav(part, sample_rate):
        _remove(part)
        return "ffmpeg wrote no valid 16 kHz mono wav"
    os.replace(part, wav)
    return None


def _remove(path):
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def convert_voxceleb2(
    src,
    dst=None,
    beside=False,
    workers=None,
    ffmpeg="ffmpeg",
    overwrite=False,
    sample_rate=SAMPLE_RATE,
    progress=True,
):
    """Convert every ``.m4a`` under ``src`` to 16 kHz mono wav.

    Arguments
    ---------
    src : str
        Folder of ``.m4a`` files (``<vox2>/dev/aac``), or the VoxCeleb2
        root holding it (see :func:`resolve_source`).
    dst : str or None
        Output root (None: :func:`default_output`, unless ``beside``).
    beside : bool
        Write each wav next to its ``.m4a``.
    workers : int or None
        Parallel ffmpeg processes (None: the CPU count).
    ffmpeg : str
        ffmpeg name or path.
    overwrite : bool
        Convert files whose valid output already exists too.
    sample_rate : int
        Output rate.
    progress : bool
        Show a tqdm bar.

    Returns
    -------
    dict
        ``converted``, ``skipped`` (already valid), ``failed`` (list of
        ``(m4a, reason)``) and ``output`` (the output root).

    Raises
    ------
    FileNotFoundError
        When ``src`` is not a folder.
    FFmpegNotFoundError
        When files need converting and ffmpeg cannot be found.
    dampit.utils.file_lock.LockError
        When another converter is writing the same output.
    """
    if not os.path.isdir(src):
        raise FileNotFoundError(f"VoxCeleb2 m4a folder not found: {src}")
    src = resolve_source(src)
    if beside:
        dst = None
    elif dst is None:
        dst = default_output(src)
    out_root = src if dst is None else os.path.abspath(dst)
    with output_lock(out_root):  # one converter per output
        todo, done = list_jobs(src, dst, overwrite, sample_rate)
        result = {
            "converted": 0,
            "skipped": len(done),
            "failed": [],
            "output": out_root,
        }
        if todo:
            exe = find_ffmpeg(ffmpeg)
            _convert(todo, exe, workers, sample_rate, progress, result)
    return result


def _convert(todo, ffmpeg, workers, sample_rate, progress, result):
    """Convert the ``todo`` pairs with ``workers`` ffmpeg processes at
    once; count them in ``result`` and list the failures in its output
    folder's :data:`FAILURES`."""
    workers = workers or os.cpu_count() or 1
    with ThreadPoolExecutor(max(1, int(workers))) as pool:
        futures = pool.map(
            lambda pair: (pair, convert_one(*pair, ffmpeg, sample_rate)), todo
        )
        for (m4a, _), err in tqdm(
            futures, total=len(todo), desc="m4a -> wav", disable=not progress
        ):
            if err is None:
                result["converted"] += 1
            else:
                result["failed"].append((m4a, err))
    if result["failed"]:
        lines = "".join(f"{m}\t{e}\n" for m, e in result["failed"])
        atomic_write_text(os.path.join(result["output"], FAILURES), lines)


def main(argv=None):
    """Command line; see the module docstring.

    Arguments
    ---------
    argv : list of str or None
        Arguments (None: ``sys.argv[1:]``).

    Returns
    -------
    int
        0 when every file is converted, 1 when some failed, 2 when ffmpeg
        or the input folder is missing or the output is being written by
        another converter.
    """
    parser = argparse.ArgumentParser(
        description="Convert VoxCeleb2 .m4a files to 16 kHz mono wav "
        "(parallel, resumable).",
    )
    parser.add_argument(
        "src", help="VoxCeleb2 root, or a folder of .m4a files (<vox2>/dev/aac)"
    )
    parser.add_argument(
        "--out",
        default=None,
        help="output root (default: sibling 'wav' folder of an 'aac' src)",
    )
    parser.add_argument(
        "--beside", action="store_true", help="write wavs next to the m4a"
    )
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--ffmpeg", default="ffmpeg")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    try:
        res = convert_voxceleb2(
            args.src,
            dst=args.out,
            beside=args.beside,
            workers=args.workers,
            ffmpeg=args.ffmpeg,
            overwrite=args.overwrite,
            progress=not args.quiet,
        )
    except (FFmpegNotFoundError, FileNotFoundError, LockError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(
        f"converted {res['converted']}, already done {res['skipped']}, "
        f"failed {len(res['failed'])}; output in {res['output']}"
    )
    if res["failed"]:
        for m4a, err in res["failed"][:20]:
            print(f"  {m4a}: {err}", file=sys.stderr)
        print(
            f"full list in {os.path.join(res['output'], FAILURES)}; run "
            "again to retry the failed files",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
