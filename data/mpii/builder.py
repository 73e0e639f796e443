"""tfds builder ``mpii_human_pose``: one record per MPII person (schema in ``data/records.py``).

Splits (``data/mpii/split.py``): ``train`` (25925 persons on the release), ``validation`` (the fixed 2958-person
Tompson set), ``test`` (persons of test images; no joints: ``joints`` 0, ``annotated`` False, ``head_box`` 0).
Image entries whose file is absent from the manual directory (or unreadable) are skipped, logged and counted in
``builder.skipped``; persons in no split (no objpos/scale, training persons without joints) are counted in
``builder.excluded``; nothing is dropped silently.

Configs: ``canvas576`` (default, the paper's 576 px canvas). Another canvas size or an injected validation list
(tests) is a custom config: ``MpiiHumanPose(config=mpii_config(canvas_size, validation_persons), ...)``, written to
its own directory ``mpii_human_pose/<config name>/1.0.0``; ``mpii_config()`` itself (canvas 576) is the registered
config, the same as ``MpiiHumanPose()``.

Interrupted builds, damaged files: see ``data/build_guard.py`` (stale ``incomplete.*`` folders are removed by the
next build; a truncated record file is reported when the dataset is opened).

Usage (no TensorFlow needed)::

    import data.mpii.builder  # registers mpii_human_pose
    b = data.mpii.builder.MpiiHumanPose(data_dir=data_dir)
    b.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))  # array_record
    val = b.as_data_source()["validation"]  # or tfds.data_source("mpii_human_pose", data_dir=...)
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import hashlib
import logging
import os
import re
from collections.abc import Iterator, Sequence
from typing import Any

import cv2
import numpy as np
import tensorflow_datasets as tfds
import tqdm

from data import build_guard, records
from data.mpii import manual, split
from data.mpii.release import ImageAnnotation, Person

log = logging.getLogger(__name__)

DEFAULT_CANVAS_SIZE = 576
_MAX_LOGGED = 10  # missing/unreadable images named in the log per split; the rest are counted
_CITATION = """\
@inproceedings{andriluka14cvpr,
  author = {Mykhaylo Andriluka and Leonid Pishchulin and Peter Gehler and Bernt Schiele},
  title = {2D Human Pose Estimation: New Benchmark and State of the Art Analysis},
  booktitle = {IEEE Conference on Computer Vision and Pattern Recognition (CVPR)},
  year = {2014},
}"""


@dataclasses.dataclass(eq=False)
class MpiiConfig(tfds.core.BuilderConfig):
    """Builder config.

    Attributes:
      canvas_size: C, side of the stored canvas (multiple of 6).
      validation_persons: (annolist index, annorect index) pairs of the validation split, 0-based; None for the
        shipped Tompson list (checked by SHA-256).
    """

    canvas_size: int = DEFAULT_CANVAS_SIZE
    validation_persons: tuple[tuple[int, int], ...] | None = None


def mpii_config(canvas_size: int = DEFAULT_CANVAS_SIZE,
                validation_persons: Sequence[tuple[int, int]] | None = None) -> MpiiConfig:
    """A config named after its canvas size (``canvas576``), plus a digest of a non-default validation list."""
    if canvas_size <= 0 or canvas_size % 6:
        raise ValueError(f"canvas_size must be a positive multiple of 6 (box = 2/3 of it), got {canvas_size}")
    name = f"canvas{canvas_size}"
    pairs = None
    if validation_persons is not None:
        pairs = tuple((int(i), int(p)) for i, p in validation_persons)
        digest = hashlib.sha256(split.persons_text(pairs).encode()).hexdigest()
        if digest != split.VALIDATION_SHA256:
            name += f"_val{digest[:8]}"
        else:
            pairs = None
    return MpiiConfig(name=name, canvas_size=canvas_size, validation_persons=pairs,
                      description=f"{canvas_size} px canvas per person"
                      + (", custom validation list" if pairs else ", Tompson validation split"))


class MpiiHumanPose(build_guard.GuardedBuilder, tfds.core.GeneratorBasedBuilder):
    """MPII Human Pose, one example per person, canvas crops around each person."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Per-person canvas records; Tompson validation split."}
    BUILDER_CONFIGS = [mpii_config(DEFAULT_CANVAS_SIZE)]
    MANUAL_DOWNLOAD_INSTRUCTIONS = manual.INSTRUCTIONS

    def __init__(self, *, num_threads: int | None = None, progress: bool = False, **kwargs: Any):
        """Creates the builder.

        Args:
          num_threads: threads decoding, cropping and encoding images (default min(4, CPUs)).
          progress: show a tqdm bar per split (images done / images needed).
          **kwargs: for ``tfds.core.GeneratorBasedBuilder``: data_dir, config (``mpii_config(...)``), version,
            file_format (default "array_record": readable by ``as_data_source``, writable without TensorFlow).
        """
        kwargs.setdefault("file_format", "array_record")
        super().__init__(**kwargs)
        self._num_threads = num_threads or min(4, os.cpu_count() or 1)
        self._progress = progress
        # split -> {"missing images": n, "unreadable images": n, "persons skipped": n}, filled while generating.
        self.skipped: dict[str, dict[str, int]] = {}
        # reason -> persons of the release in no split (no objpos/scale, no joints), filled by _split_generators.
        self.excluded: dict[str, int] = {}

    @classmethod
    def rebuild_command_for(cls, config_name: str, data_dir: str) -> str:
        """The ``python -m data.prepare mpii ...`` command that builds config ``canvas<C>`` into ``data_dir``.

        (A config with an injected validation list, ``canvas<C>_val<digest>``, has no command: tests build it.)
        """
        match = re.fullmatch(r"canvas(\d+)(_val\w+)?", config_name)
        canvas = int(match[1]) if match else DEFAULT_CANVAS_SIZE
        return ("python -m data.prepare mpii --manual-dir <folder holding the MPII release files> "
                f"--data-dir {data_dir}" + (f" --canvas-size {canvas}" if canvas != DEFAULT_CANVAS_SIZE else ""))

    def _download_and_prepare(self, dl_manager: tfds.download.DownloadManager, download_config: Any) -> None:
        # The train split outgrows tfds's 1 GB in-memory shuffle: let it spill to local files without TF.
        with records.tfds_shuffle_without_tensorflow():
            super()._download_and_prepare(dl_manager, download_config)

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=("MPII Human Pose (Andriluka et al. 2014): one example per person, a square canvas "
                         "around the person box (objpos, 250 * scale, shifted by 15 * scale) plus 25% margins; "
                         "joints, head box and objpos in the original 1-based image frame."),
            features=records.features(self.builder_config.canvas_size),
            homepage=manual.HOMEPAGE,
            citation=_CITATION,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator[Any]]:
        files = manual.find_manual_files(dl_manager.manual_dir)
        images = manual.read_annotations(files)
        validation = self.builder_config.validation_persons
        if validation is None:
            validation = split.load_validation_persons()
        result = split.split_persons(images, validation)
        self.excluded = dict(result.skipped)
        log.info("mpii_human_pose: persons per split %s; in no split %s",
                 {k: len(v) for k, v in result.persons.items()}, self.excluded)
        return {name: self._generate_examples(name, files, refs) for name, refs in result.persons.items()}

    def _generate_examples(self, split_name: str, files: manual.ManualFiles,
                           refs: list[tuple[ImageAnnotation, Person]]) -> Iterator[tuple[str, dict[str, Any]]]:
        by_image: dict[str, list[tuple[ImageAnnotation, Person]]] = collections.defaultdict(list)
        for ref in refs:
            by_image[ref[0].name].append(ref)
        counts = self.skipped.setdefault(split_name, collections.Counter())
        canvas_size = self.builder_config.canvas_size
        bar = tqdm.tqdm(total=len(by_image), desc=f"mpii {split_name} images", unit="img",
                        disable=not self._progress)
        pool = concurrent.futures.ThreadPoolExecutor(self._num_threads, thread_name_prefix="mpii-crop")
        pending: collections.deque[concurrent.futures.Future] = collections.deque()
        try:
            for name, data in manual.iter_image_bytes(files, by_image):
                pending.append(pool.submit(_image_examples, name, data, by_image[name], canvas_size))
                # A bounded window keeps memory flat while the threads decode, crop and encode in parallel.
                while len(pending) > 4 * self._num_threads:
                    yield from self._finish_image(pending.popleft(), split_name, by_image, counts)
                    bar.update(1)
            while pending:
                yield from self._finish_image(pending.popleft(), split_name, by_image, counts)
                bar.update(1)
        finally:
            # Interrupted (Ctrl-C, generator closed): drop the queued images instead of cropping them first.
            pool.shutdown(wait=True, cancel_futures=True)
            bar.close()
        if counts:
            log.warning("mpii_human_pose %s: %s", split_name, dict(counts))

    @staticmethod
    def _finish_image(future: concurrent.futures.Future, split_name: str,
                      by_image: dict[str, list[tuple[ImageAnnotation, Person]]],
                      counts: collections.Counter) -> list[tuple[str, dict[str, Any]]]:
        """One image's (key, record) pairs; a missing or unreadable image is counted (and logged) instead."""
        name, status, examples = future.result()
        if status != "ok":
            counts[f"{status} images"] += 1
            counts["persons skipped"] += len(by_image[name])
            n = counts[f"{status} images"]
            if n <= _MAX_LOGGED:
                log.warning("mpii_human_pose %s: %s image %s, skipping its %d person(s)%s", split_name, status,
                            name, len(by_image[name]), " (further ones only counted)" if n == _MAX_LOGGED else "")
        return examples


def _image_examples(name: str, data: bytes | None, refs: list[tuple[ImageAnnotation, Person]],
                    canvas_size: int) -> tuple[str, str, list[tuple[str, dict[str, Any]]]]:
    """Decodes one image and builds its persons' (key, record) pairs; status "ok", "missing" or "unreadable"."""
    if data is None:
        return name, "missing", []
    # MATLAB's imread (the frame of the annotations) ignores EXIF orientation, so OpenCV must too.
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if bgr is None:
        return name, "unreadable", []
    image = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    height, width = image.shape[:2]
    out = []
    for entry, person in refs:
        a = records.canvas_transform(person.center, person.scale, canvas_size)
        canvas = records.render_canvas(image, a, canvas_size)
        head_box = person.head_box if person.head_box is not None else np.zeros(4)
        out.append((f"{entry.index:05d}_{person.index:02d}", records.make_record(
            canvas=canvas, joints=person.joints, annotated=person.annotated, visible=person.visible,
            head_box=head_box, center=person.center, scale=person.scale, canvas_to_image=a,
            image_size=(width, height), image_name=entry.name, annolist_index=entry.index,
            person_index=person.index)))
    return name, "ok", out
