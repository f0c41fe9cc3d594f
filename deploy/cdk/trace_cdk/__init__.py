"""Trace's AWS profile as an AWS CDK app (Python): ``python deploy/cdk/app.py``."""
