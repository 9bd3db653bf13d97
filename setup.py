from setuptools import find_packages, setup

setup(
    name="smartyd",
    version="0.1.0",
    description="Integration daemon for IPTV/ISP operators: stream tokens, terminal payments, "
    "payment gateways, fiscalization, billing core",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    package_dir={"": "."},
    packages=find_packages(include=["smartyd", "smartyd.*"]) + ["twisted.plugins"],
    package_data={"smartyd.db": ["migrations/*.sql"], "smartyd.tvmw": ["spec_methods.json"]},
    install_requires=[
        "twisted>=24.3",
        "treq>=23.11",
        "klein>=23.12",
        "txpostgres>=1.7",
        "psycopg2-binary>=2.9",
        "lxml>=5.0",
        "service_identity>=24.1",
        "attrs>=23.1",
        "pgserver>=0.1.4",
        "prometheus_client>=0.20",
        "httptools>=0.6",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-twisted>=1.14",
            "hypothesis>=6.100",
            # The widgets' browser test drives Debian's chromium (smartyd-dev
            # installs it); Playwright's own browser download is not used.
            "playwright>=1.40",
        ],
    },
    entry_points={
        "console_scripts": [
            "smartyd-admin = smartyd.admin:main",
        ],
    },
)
