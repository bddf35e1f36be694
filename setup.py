"Packaging: every value comes from settings.ini (edit it there)."
import shlex
from configparser import ConfigParser
import setuptools

parser = ConfigParser(delimiters=['='])
parser.read('settings.ini', encoding='utf-8')
cfg = parser['DEFAULT']

required = 'version description keywords author author_email lib_name lib_path user license status min_python audience language'.split()
missing = [k for k in required if k not in cfg]
if missing: raise SystemExit(f"settings.ini lacks: {', '.join(missing)}")

statuses = ['0 - Pre-Planning', '1 - Planning', '2 - Pre-Alpha', '3 - Alpha', '4 - Beta', '5 - Production/Stable']
pythons = ['3.10', '3.11', '3.12', '3.13']
lib = cfg['lib_path']

setuptools.setup(
    name=cfg['lib_name'], version=cfg['version'], description=cfg['description'], keywords=cfg['keywords'],
    author=cfg['author'], author_email=cfg['author_email'], license='Apache-2.0', url=cfg['git_url'],
    classifiers=['Development Status :: ' + statuses[int(cfg['status'])],
                 'Intended Audience :: ' + cfg['audience'].title(),
                 'Natural Language :: ' + cfg['language'].title()]
               + ['Programming Language :: Python :: ' + v for v in pythons[pythons.index(cfg['min_python']):]],
    packages=setuptools.find_packages(include=[lib, lib + '.*']),
    include_package_data=True,
    package_data={lib: ['configs/*.yaml', 'reference/*.json', 'pretrained/*.safetensors', 'pretrained/*.json']},
    install_requires=shlex.split(cfg.get('requirements', '')),
    extras_require={'dev': shlex.split(cfg.get('dev_requirements', ''))},
    python_requires='>=' + cfg['min_python'],
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    zip_safe=False,
    entry_points={'console_scripts': cfg.get('console_scripts', '').split(),
                  'nbdev': [f'{lib}={lib}._modidx:d']})
