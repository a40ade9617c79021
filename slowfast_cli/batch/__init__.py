"""``slowfast batch``: every video under a folder to a token file, resumable, nothing lost on bad input.

- ``listing``: which videos (a walk, or ``--files-from``) and their outputs;
- ``plan``: the output folder's lock, the resume rules, the ``BatchPlan``;
- ``records``: ``Record`` per attempt, failure kinds, the append-only manifest;
- ``run``: the ``Engine`` protocol, ``record_all`` (a file and its manifest line, both or neither), the report;
- ``parts``: the Ray engine's per-block manifest parts (written by its actors), the driver's merges, recovery;
- ``engines``: ``local`` (decoding processes here) and ``ray`` (a Ray cluster), by name;
- ``workers``: the decoding processes both engines use; ``faults``: the tests' crash/hang hook.

Outputs mirror the input tree (``a/b.mp4`` -> ``OUT/a/b.pt``) and are written atomically; every attempt is one line
of ``OUT/manifest.jsonl``, and ``OUT/report.json`` summarises the folder at the end.
"""
