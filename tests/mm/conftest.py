"""The mm tests run in an environment set up as tools/train.py sets it up: mmcv's op stand-in installed.

mmengine (0.10.7, pinned) resolves each ``mmdet::`` / ``mmseg::`` base of a config by reading every metafile of the
package (~0.2 s a base, four bases a config, a dozen config reads a test file); the tests memoise that lookup, a
function of the installed packages only."""

import mmengine.config.config as mmengine_config

import visattn.mm

visattn.mm.setup()


def _memoised(lookup):
    results = {}

    def cached(package_path: str, cfg_file: str) -> str:
        key = (package_path, cfg_file)
        if key not in results:
            try:
                results[key] = (lookup(package_path, cfg_file), None)
            except ValueError as err:  # not a metafile config: mmengine then takes the package's _base_ path
                results[key] = (None, err)
        path, err = results[key]
        if err is not None:
            raise err
        return path

    return cached


mmengine_config._get_external_cfg_path = _memoised(mmengine_config._get_external_cfg_path)
