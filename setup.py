from setuptools import setup

setup(
    name="archiverd",
    version="0.1.0",
    description="An archive cache in front of VCS hosts: streams repository "
    "archives into S3 or local storage and redirects clients to signed URLs.",
    python_requires=">=3.11",
    packages=["archiverd", "archiverd.storage", "twisted.plugins"],
    package_data={"twisted": ["plugins/archiverd_plugin.py"]},
    install_requires=[
        "twisted>=24.7",
        "treq>=24.9",
        "klein>=24.8",
        "botocore>=1.35",
    ],
)
