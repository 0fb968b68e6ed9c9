"""The lab: experiments that answer research questions with the library (gan/); their reports live in docs/."""
