"""trajscope.api"""
