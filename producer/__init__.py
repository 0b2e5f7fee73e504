"""trajscope.producer"""
